package main

import (
	"bytes"
	"context"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/config"
	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/listener"
)

// sample returns a value, different from the default, that the flag
// accepts: every flag gets a non-default value in the round trip.
func sample(t *testing.T, fs *flag.FlagSet, f *flag.Flag) []string {
	t.Helper()
	if _, ok := f.Value.(config.Lister); ok {
		return []string{"127.0.0.1:5353", "[::1]:53;weight=2;proxy-v2"}
	}
	for _, v := range []string{"true", "false", "3s", "7", "all", `a value: with # and "quotes"`} {
		_, fresh, _ := newServeFlags(new(bytes.Buffer))
		if fresh.Set(f.Name, v) == nil && fresh.Lookup(f.Name).Value.String() != f.DefValue {
			return []string{v}
		}
	}
	t.Fatalf("no sample value for flag %s", f.Name)
	return nil
}

// TestConfigEveryKeyRoundTrips: each serve flag, set to a non-default
// value, survives Dump → Apply into a fresh flag set.
func TestConfigEveryKeyRoundTrips(t *testing.T) {
	_, fs, _ := newServeFlags(new(bytes.Buffer))
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || f.Name == "check-config" {
			return
		}
		for _, v := range sample(t, fs, f) {
			if err := fs.Set(f.Name, v); err != nil {
				t.Fatalf("%s=%q: %v", f.Name, v, err)
			}
		}
		n++
	})
	dump := config.Dump(fs)
	_, fresh, _ := newServeFlags(new(bytes.Buffer))
	if err := config.Apply(fresh, "dump.yaml", dump, nil); err != nil {
		t.Fatalf("applying the dump: %v\n%s", err, dump)
	}
	fs.VisitAll(func(f *flag.Flag) {
		if got := fresh.Lookup(f.Name).Value.String(); got != f.Value.String() {
			t.Errorf("%s: round trip gave %q, want %q", f.Name, got, f.Value.String())
		}
	})
	if n < 30 {
		t.Errorf("only %d flags seen", n)
	}
}

func TestConfigErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", "listen: [127.0.0.1:53]\nupstreams: [127.0.0.1:53]\n", "cfg.yaml:2: upstreams: unknown key"},
		{"bad duration", "timeout: 2s\nprobe-interval: soon\n", `cfg.yaml:2: probe-interval: invalid value "soon"`},
		{"bad int", "\n\nworkers: many\n", `cfg.yaml:3: workers: invalid value "many"`},
		{"list for a scalar", "timeout: [1s, 2s]\n", "cfg.yaml:1: timeout: takes one value, not a list"},
		{"nested", "listen:\n  a: 1\n", "cfg.yaml:2: listen: value must be a plain value or a list"},
		{"empty value", "upstream:\n", "cfg.yaml:1: upstream: empty value"},
		{"duplicate", "timeout: 1s\ntimeout: 2s\n", "cfg.yaml:2: timeout: duplicate key (first at line 1)"},
		{"not a mapping", "- a\n- b\n", "cfg.yaml:1: the file must be a mapping"},
		{"reserved", "config: other.yaml\n", "cfg.yaml:1: config: unknown key"},
		{"yaml syntax", "listen: [\n", "cfg.yaml: yaml: line"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, fs, _ := newServeFlags(new(bytes.Buffer))
			err := config.Apply(fs, "cfg.yaml", []byte(tc.yaml), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestFlagsOverrideConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte("listen: [127.0.0.1:5300]\nupstream: [127.0.0.1:5353]\ntimeout: 5s\nworkers: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, _, _, code := parseServe([]string{"--config", path, "--timeout", "1s", "--listen", "127.0.0.1:5400"}, new(bytes.Buffer))
	if code >= 0 {
		t.Fatalf("parse failed: %d", code)
	}
	if f.timeout != time.Second || f.workers != 3 || len(f.listen) != 1 || f.listen[0] != "127.0.0.1:5400" {
		t.Fatalf("got timeout %v workers %d listen %v", f.timeout, f.workers, f.listen)
	}
}

// TestCheckConfigBindsNothing: a live proxy on a port sees no disruption
// while check-config for the same port runs 100 times. A check-config that
// bound the port with SO_REUSEPORT would take a share of the queries and
// never answer them.
func TestCheckConfigBindsNothing(t *testing.T) {
	up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() { // a minimal echo upstream: QR set, same bytes
		buf := make([]byte, 1500)
		for {
			n, from, err := up.ReadFromUDP(buf)
			if err != nil {
				return
			}
			buf[2] |= 0x80
			_, _ = up.WriteToUDP(buf[:n], from)
		}
	}()
	upAddr := up.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams: []netip.AddrPort{upAddr}, Workers: 2, ACL: listener.AllowAll()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	addr := srv.Addrs()[0].String()
	c := &dns.Client{Timeout: 2 * time.Second}
	for i := 0; i < 100; i++ {
		var out, errb bytes.Buffer
		if code := runCheckConfig([]string{"--listen", addr, "--upstream", upAddr.String(), "--workers", "4"}, &out, &errb); code != 0 {
			t.Fatalf("check-config: %d %s", code, errb.String())
		}
		m := new(dns.Msg)
		m.SetQuestion("check.test.", dns.TypeA)
		if _, _, err := c.Exchange(m, addr); err != nil {
			t.Fatalf("query %d during check-config: %v", i, err)
		}
	}
	if c := srv.Counters(); c.Received != 100 {
		t.Errorf("live proxy received %d of 100", c.Received)
	}
}

func TestCheckConfigRejects(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "127.0.0.1:53"}, "no upstream"},
		{[]string{"--upstream", "127.0.0.1:53"}, "no listen"},
		{[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:5300"}, "forwarding loop"},
		{[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:53", "--policy", "random"}, "policy"},
		{[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:53", "--dnstap-file", "/nonexistent/dir/x.fstrm"}, "directory does not exist"},
		{[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:53", "--user", "no-such-user-here"}, "no-such-user-here"},
		{[]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:53", "--group", "nogroup"}, "--group needs --user"},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		code := runCheckConfig(tc.args, &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: code %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
