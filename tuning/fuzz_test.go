package tuning

import (
	"os"
	"testing"
)

// Fuzz targets for every parser: none may panic, and what they return on
// success must be plausible. Seeds are the fixture files plus the torn
// shapes the table tests name.

func seedFile(f *testing.F, paths ...string) {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatalf("seed %s: %v", p, err)
		}
		f.Add(b)
	}
}

func FuzzParseSNMP(f *testing.F) {
	seedFile(f, "testdata/healthy/proc/net/snmp", "testdata/unhealthy/proc/net/snmp")
	f.Add([]byte("Udp: A B\nUdp: 1\n")) // fewer values than names
	f.Add([]byte("Udp: A\n"))           // header only
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSNMP(b)
		if err == nil && m == nil {
			t.Fatal("nil map without error")
		}
	})
}

func FuzzParseSNMP6(f *testing.F) {
	seedFile(f, "testdata/healthy/proc/net/snmp6", "testdata/unhealthy/proc/net/snmp6")
	f.Add([]byte("Udp6InErrors\n")) // truncated line
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseSNMP6(b)
		if err == nil && len(m) == 0 {
			t.Fatal("empty map without error")
		}
	})
}

func FuzzParseUDPTable(f *testing.F) {
	seedFile(f, "testdata/healthy/proc/net/udp", "testdata/healthy/proc/net/udp6", "testdata/unhealthy/proc/net/udp")
	f.Add([]byte(udpHeader + "  1: 00000000:0035\n")) // torn row
	f.Fuzz(func(t *testing.T, b []byte) {
		socks, bad, err := parseUDPTable(b)
		if err != nil && (socks != nil || bad != 0) {
			t.Fatal("results with an error")
		}
		if bad < 0 {
			t.Fatal("negative bad count")
		}
	})
}

func FuzzParseSoftnet(f *testing.F) {
	seedFile(f, "testdata/healthy/proc/net/softnet_stat", "testdata/unhealthy/proc/net/softnet_stat")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, cpus, err := parseSoftnet(b)
		if err == nil && cpus < 1 {
			t.Fatalf("no error but %d cpus", cpus)
		}
	})
}

func FuzzParseCPUList(f *testing.F) {
	seedFile(f, "testdata/healthy/sys/devices/system/cpu/online")
	f.Add([]byte("0-3,6,8-9"))
	f.Add([]byte("0-4294967295")) // must be refused quickly, not counted
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseCPUList(b)
		if err == nil && (n < 1 || n > maxCPUs) {
			t.Fatalf("no error but %d cpus", n)
		}
	})
}

func FuzzParseCPUInfo(f *testing.F) {
	seedFile(f, "testdata/unhealthy/proc/cpuinfo")
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseCPUInfo(b)
		if err == nil && n < 1 {
			t.Fatalf("no error but %d cpus", n)
		}
	})
}

func FuzzParseCapEff(f *testing.F) {
	seedFile(f, "testdata/healthy/proc/4242/status", "testdata/unhealthy/proc/self/status")
	f.Add([]byte("CapEff:\tnope\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseCapEff(b)
	})
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"127.0.0.1:53", "[::1]:53", ":53", "53", "::1:53", "[::1]:", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePort(s)
		if err == nil && p == 0 {
			t.Fatal("port 0 accepted")
		}
	})
}
