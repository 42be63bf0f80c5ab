//go:build !tapproxy_small

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tapproxy/tapproxy/internal/testenv"
	"github.com/tapproxy/tapproxy/tap/reader"
)

func TestRunReport(t *testing.T) {
	corpus := testenv.DnstapCorpus(t)
	good := filepath.Join(corpus, "dnsdist-proxy.fstrm")
	htmlOut := filepath.Join(t.TempDir(), "r.html")
	for _, c := range []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"text", []string{good}, reader.ExitOK, "client queries 8, answered 8", ""},
		{"flags after file", []string{good, "--top", "2"}, reader.ExitOK, "top query names", ""},
		{"json", []string{"--format", "json", good}, reader.ExitOK, `"queries": 8`, ""},
		{"html", []string{"--html", htmlOut, good}, reader.ExitOK, "latency", ""},
		{"no file", nil, reader.ExitUsage, "", "want exactly one FILE"},
		{"two files", []string{good, good}, reader.ExitUsage, "", "want exactly one FILE"},
		{"bad format", []string{"--format", "yaml", good}, reader.ExitUsage, "", "want text or json"},
		{"missing", []string{filepath.Join(t.TempDir(), "nope.fstrm")}, reader.ExitIO, "", "no such file"},
		{"not frame streams", []string{filepath.Join(corpus, "negative", "wrong-content-type.fstrm")}, reader.ExitNotFrameStream, "", "content type"},
		// A damaged file is still summarised up to the damage.
		{"truncated", []string{filepath.Join(corpus, "negative", "truncated-mid-frame.fstrm")}, reader.ExitTruncated, "damaged", ""},
		{"bad frame", []string{filepath.Join(corpus, "negative", "garbage-data-frame.fstrm")}, reader.ExitBadFrame, "bad frames skipped: 1", ""},
		{"help", []string{"--help"}, reader.ExitOK, "", "exit codes:"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := runReport(context.Background(), c.args, &out, &errb)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, errb.String())
			}
			if !strings.Contains(out.String(), c.stdout) {
				t.Errorf("stdout lacks %q:\n%s", c.stdout, out.String())
			}
			if !strings.Contains(errb.String(), c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, errb.String())
			}
			if c.name == "json" {
				var v map[string]any
				if err := json.Unmarshal(out.Bytes(), &v); err != nil {
					t.Errorf("--format json is not JSON: %v", err)
				}
			}
		})
	}
	b, err := os.ReadFile(htmlOut)
	if err != nil || !bytes.Contains(b, []byte("<svg")) {
		t.Errorf("--html wrote %d bytes (%v), want a report with plots", len(b), err)
	}
}
