// Package config reads tapproxy's YAML configuration file. Its keys are the
// long names of the serve command's flags and its values what the flags
// take (lists as YAML sequences), so the file covers exactly what the flags
// cover and the two can never drift apart. Flags given on the command line
// win over the file.
//
// Unknown keys, nested mappings, empty values, duplicate keys and values a
// flag rejects are errors that name the file, line and key.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is a problem at a line of the file.
type Error struct {
	Path string
	Line int
	Key  string
	Err  error
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %v", e.Path, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %s: %v", e.Path, e.Line, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrUnknownKey is wrapped by the Error for a key that is not a flag.
var ErrUnknownKey = errors.New("unknown key (not a serve flag)")

// Reserved keys that make no sense inside the file.
var reserved = map[string]bool{"config": true, "check-config": true, "help": true}

// Load reads path and sets every key on fs, except those in skip (the
// flags given on the command line, which win).
func Load(fs *flag.FlagSet, path string, skip map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	return Apply(fs, path, data, skip)
}

// Apply is Load on bytes already read; path only names the source in
// errors.
func Apply(fs *flag.FlagSet, path string, data []byte, skip map[string]bool) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3's message already holds "line N".
		return fmt.Errorf("%s: %w", path, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file: nothing set
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return &Error{Path: path, Line: root.Line, Err: errors.New("the file must be a mapping of flag names to values")}
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		fail := func(line int, err error) error { return &Error{Path: path, Line: line, Key: key, Err: err} }
		if prev, dup := seen[key]; dup {
			return fail(k.Line, fmt.Errorf("duplicate key (first at line %d)", prev))
		}
		seen[key] = k.Line
		f := fs.Lookup(key)
		if f == nil || reserved[key] {
			return fail(k.Line, ErrUnknownKey)
		}
		if skip[key] {
			continue
		}
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				return fail(v.Line, errors.New("empty value"))
			}
			if err := fs.Set(key, v.Value); err != nil {
				return fail(v.Line, fmt.Errorf("invalid value %q: %v", v.Value, err))
			}
		case yaml.SequenceNode:
			if !isList(f) {
				return fail(v.Line, errors.New("takes one value, not a list"))
			}
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
					return fail(item.Line, errors.New("list items must be plain values"))
				}
				if err := fs.Set(key, item.Value); err != nil {
					return fail(item.Line, fmt.Errorf("invalid value %q: %v", item.Value, err))
				}
			}
		default:
			return fail(v.Line, errors.New("value must be a plain value or a list"))
		}
	}
	return nil
}

// Lister is implemented by repeatable flags: their values as a list.
type Lister interface{ List() []string }

func isList(f *flag.Flag) bool {
	_, ok := f.Value.(Lister)
	return ok
}

// Dump writes every flag of fs (except the reserved ones) as a YAML file
// that Apply reads back to the same values: the effective configuration.
func Dump(fs *flag.FlagSet) []byte {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if !reserved[f.Name] {
			names = append(names, f.Name)
		}
	})
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		f := fs.Lookup(n)
		if l, ok := f.Value.(Lister); ok {
			items := l.List()
			if len(items) == 0 {
				fmt.Fprintf(&b, "# %s: []\n", n)
				continue
			}
			fmt.Fprintf(&b, "%s:\n", n)
			for _, it := range items {
				fmt.Fprintf(&b, "  - %s\n", quote(it))
			}
			continue
		}
		fmt.Fprintf(&b, "%s: %s\n", n, quote(f.Value.String()))
	}
	return b.Bytes()
}

// quote renders s as a YAML scalar that reads back as the same string.
func quote(s string) string {
	if s == "" || strings.ContainsAny(s, ":#[]{},&*!|>'\"%@`;") || strings.TrimSpace(s) != s {
		return strconv.Quote(s)
	}
	return s
}
