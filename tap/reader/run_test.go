package reader

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Options // compared on the fields set here
		err  string  // substring of stderr for usage errors
	}{
		{"file", []string{"x.fstrm"}, Options{File: "x.fstrm"}, ""},
		{"flags after the file", []string{"x.fstrm", "--format", "yaml", "--pairs"}, Options{File: "x.fstrm", Format: YAML, Pairs: true}, ""},
		{"json", []string{"-format=json", "x"}, Options{File: "x", Format: JSON}, ""},
		{"unix with -w", []string{"--unix", "/tmp/s", "-w", "out.fstrm"}, Options{Unix: "/tmp/s", WriteFile: "out.fstrm"}, ""},
		{"tcp", []string{"--tcp", "127.0.0.1:0"}, Options{TCP: "127.0.0.1:0"}, ""},
		{"nothing", nil, Options{}, "missing FILE"},
		{"two files", []string{"a", "b"}, Options{}, "more than one FILE"},
		{"file and socket", []string{"a", "--unix", "s"}, Options{}, "not several"},
		{"unix and tcp", []string{"--unix", "s", "--tcp", "127.0.0.1:1"}, Options{}, "not both"},
		{"-w without collector", []string{"-w", "o", "a"}, Options{}, "-w needs"},
		{"pairs on a socket", []string{"--pairs", "--tcp", "127.0.0.1:1"}, Options{}, "--pairs needs a FILE"},
		{"bad format", []string{"--format", "xml", "a"}, Options{}, "unknown format"},
		{"unknown flag", []string{"--bogus", "a"}, Options{}, "flag provided but not defined"},
		{"bad frame size", []string{"--max-frame-size", "0", "a"}, Options{}, "must be positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			o, err := ParseArgs(tc.args, &stderr)
			if tc.err != "" {
				if err == nil || errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), tc.err) {
					t.Errorf("err %v, stderr %q; want a usage error mentioning %q", err, stderr.String(), tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v (%s)", err, stderr.String())
			}
			if o.File != tc.want.File || o.Unix != tc.want.Unix || o.TCP != tc.want.TCP || o.WriteFile != tc.want.WriteFile ||
				o.Pairs != tc.want.Pairs || o.Format != tc.want.Format || o.MaxFrameSize != DefaultMaxFrameSize {
				t.Errorf("options %+v, want %+v", o, tc.want)
			}
		})
	}
}

// TestExitCodesDocumented keeps --help, doc.go and the constants in step.
func TestExitCodesDocumented(t *testing.T) {
	var stderr bytes.Buffer
	if _, err := ParseArgs([]string{"--help"}, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(stderr.String(), "exit codes:\n"+ExitCodesText()) {
		t.Errorf("--help does not list the exit codes:\n%s", stderr.String())
	}
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSuffix(ExitCodesText(), "\n"), "\n") {
		if !strings.Contains(string(doc), "//\t"+strings.TrimPrefix(l, "  ")+"\n") {
			t.Errorf("doc.go lacks the exit code line %q", l)
		}
	}
	seen := map[int]bool{}
	for _, e := range exitCodes {
		if seen[e.code] {
			t.Errorf("exit code %d listed twice", e.code)
		}
		seen[e.code] = true
	}
	for _, c := range []int{ExitOK, ExitUsage, ExitIO, ExitNotFrameStream, ExitTruncated, ExitBadFrame} {
		if !seen[c] {
			t.Errorf("exit code %d is not documented", c)
		}
	}
}

func TestRunFileErrors(t *testing.T) {
	code, _, stderr := runCommand(t, filepath.Join(t.TempDir(), "missing.fstrm"))
	if code != ExitIO || !strings.Contains(stderr, "no such file") {
		t.Errorf("missing file: exit %d, stderr %q", code, stderr)
	}
	code, _, _ = runCommand(t, t.TempDir()) // a directory: read fails
	if code != ExitIO {
		t.Errorf("directory: exit %d, want %d", code, ExitIO)
	}
	// A failing stdout (closed pipe) is an I/O error too.
	o, err := ParseArgs([]string{filepath.Join(corpusDir(t), "kdig-tool.fstrm")}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if code := Run(context.Background(), o, failWriter{}, &bytes.Buffer{}); code != ExitIO {
		t.Errorf("failing stdout: exit %d, want %d", code, ExitIO)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }
