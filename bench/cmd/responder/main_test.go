package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestRun starts the command in-process, waits for its ready line on the
// stderr pipe, checks the ready file, queries it, stops it through the
// context and checks the exit status and the final counters.
func TestRun(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := make(chan int, 1)
	go func() {
		c := run(ctx, []string{"--listen", "127.0.0.1:0", "--sockets", "2", "--ready-file", ready}, pw)
		pw.Close()
		code <- c
	}()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var readyLine string
	for l := range lines {
		if strings.Contains(l, "msg=ready") {
			readyLine = l
			break
		}
	}
	if readyLine == "" {
		t.Fatalf("no ready line; exit %d", <-code)
	}
	b, err := os.ReadFile(ready)
	if err != nil {
		t.Fatalf("ready file: %v", err)
	}
	addr := strings.TrimSpace(string(b))
	if !strings.HasPrefix(addr, "127.0.0.1:") || !strings.Contains(readyLine, "addr="+addr) {
		t.Fatalf("ready file %q, ready line %q", addr, readyLine)
	}
	c := &dns.Client{Timeout: 5 * time.Second}
	for _, q := range []struct {
		name  string
		rcode int
	}{{"a.bench.test.", dns.RcodeSuccess}, {"a.nx.bench.test.", dns.RcodeNameError}, {"example.org.", dns.RcodeRefused}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, dns.TypeA)
		r, _, err := c.Exchange(m, addr)
		if err != nil || r.Rcode != q.rcode {
			t.Fatalf("%s: %v %v", q.name, r, err)
		}
	}
	cancel()
	var final string
	for l := range lines {
		if strings.Contains(l, `msg="final counters"`) {
			final = l
		}
	}
	if got := <-code; got != 0 {
		t.Fatalf("exit %d", got)
	}
	for _, kv := range []string{"received=3", "answered=1", "nxdomain=1", "refused=1", "sent=3", "send_failed=0"} {
		if !strings.Contains(final, " "+kv) {
			t.Errorf("final counters %q lack %s", final, kv)
		}
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "192.0.2.1:53"},
		{"--listen", "localhost:53"},
		{"--sockets", "0", "--listen", "127.0.0.1:0"},
		{"--zone", "a..b", "--listen", "127.0.0.1:0"},
		{"--no-such-flag"},
		{"--listen", "127.0.0.1:0", "extra"},
	} {
		if got := run(context.Background(), args, io.Discard); got != 2 {
			t.Errorf("run(%q) = %d, want 2", args, got)
		}
	}
}
