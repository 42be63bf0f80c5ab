package tuning

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// errHas checks an error against an expected substring; "" wants no error.
func errHas(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error %v", err)
	case want != "" && err == nil:
		t.Errorf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q, want it to contain %q", err, want)
	}
}

func TestParseUint(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     uint64
		err      string
	}{
		{"plain", "212992\n", 212992, ""},
		{"spaces", "  5000 \n", 5000, ""},
		{"empty", "", 0, "empty"},
		{"blank", "\n\n", 0, "empty"},
		{"negative", "-1\n", 0, "not an unsigned number"},
		{"words", "lots\n", 0, "not an unsigned number"},
		{"two values", "1 2\n", 0, "not an unsigned number"},
		{"overflow", "99999999999999999999999\n", 0, "not an unsigned number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseUint([]byte(tc.in))
			errHas(t, err, tc.err)
			if got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}

const snmpOK = `Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm MaxConn
Tcp: 1 -1
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 100 2 7 99 5 1 2 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 9 9 9 9 9 9 9 9 9
`

func TestParseSNMP(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		rcvbuf   uint64
		err      string
	}{
		{"real", snmpOK, 5, ""},
		// Older kernels have fewer columns: names are read, not assumed.
		{"old kernel", "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 1 0 3 1 3 0\n", 3, ""},
		{"empty", "", 0, "empty"},
		{"no udp", "Ip: Forwarding\nIp: 1\n", 0, "no Udp: lines"},
		{"only UdpLite", "UdpLite: InErrors\nUdpLite: 4\n", 0, "no Udp: lines"},
		{"truncated after header", "Ip: A\nIp: 1\nUdp: InDatagrams NoPorts InErrors\n", 0, "header line without a values line"},
		{"truncated values", "Udp: InDatagrams NoPorts InErrors\nUdp: 1 2\n", 0, "3 names but 2 values"},
		{"garbage value", "Udp: InDatagrams RcvbufErrors\nUdp: 1 x\n", 0, "value of Udp: RcvbufErrors is not an unsigned number"},
		{"negative", "Udp: InDatagrams RcvbufErrors\nUdp: 1 -4\n", 0, "not an unsigned number"},
		{"binary", "\x00\x01\x02\xff", 0, "no Udp: lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := parseSNMP([]byte(tc.in))
			errHas(t, err, tc.err)
			if err == nil && m["RcvbufErrors"] != tc.rcvbuf {
				t.Errorf("RcvbufErrors %d, want %d", m["RcvbufErrors"], tc.rcvbuf)
			}
		})
	}
}

func TestParseSNMP6(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		inErr    uint64
		err      string
	}{
		{"real", "Ip6InReceives \t5\nUdp6InDatagrams \t10\nUdp6InErrors \t3\nUdpLite6InErrors \t9\n", 3, ""},
		{"empty", "", 0, "empty"},
		{"no udp6", "Ip6InReceives 5\n", 0, "no Udp6 counters"},
		{"truncated line", "Udp6InDatagrams 10\nUdp6InErrors\n", 0, "Udp6InErrors: want one value, got 0"},
		{"garbage", "Udp6InErrors zz\n", 0, "not an unsigned number"},
		{"extra field", "Udp6InErrors 1 2\n", 0, "want one value, got 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := parseSNMP6([]byte(tc.in))
			errHas(t, err, tc.err)
			if err == nil && m["InErrors"] != tc.inErr {
				t.Errorf("InErrors %d, want %d", m["InErrors"], tc.inErr)
			}
		})
	}
}

const udpHeader = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"

func TestParseUDPTable(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		socks    []udpSocket
		bad      int
		err      string
	}{
		{"v4", udpHeader +
			"  53: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   998        0 30001 2 00000000c77bb2b3 17\n" +
			" 122: 0100007F:14E9 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 30002 2 00000000c77bb2b3 0\n",
			[]udpSocket{{53, 30001, 17}, {5353, 30002, 0}}, 0, ""},
		{"v6", udpHeader +
			"  53: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 777 2 0000000000000000 4\n",
			[]udpSocket{{53, 777, 4}}, 0, ""},
		{"header only", udpHeader, nil, 0, ""},
		{"empty", "", nil, 0, "empty"},
		{"no header", "  53: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n", nil, 0, "no header line"},
		{"torn rows counted", udpHeader +
			"  53: 00000000:0035 00000000:0000 07 00000000:00000000\n" + // cut short
			"  54: 00000000:ZZZZ 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n" + // bad port
			"  55: 000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n" + // bad address length
			"  56: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 x 2 0 0\n" + // bad inode
			"  57: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 -1\n" + // bad drops
			"  58 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n" + // no colon on sl
			"  59: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 9 2 0 1\n",
			[]udpSocket{{53, 9, 1}}, 6, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socks, bad, err := parseUDPTable([]byte(tc.in))
			errHas(t, err, tc.err)
			if bad != tc.bad {
				t.Errorf("bad %d, want %d", bad, tc.bad)
			}
			if len(socks) != len(tc.socks) {
				t.Fatalf("got %v, want %v", socks, tc.socks)
			}
			for i := range socks {
				if socks[i] != tc.socks[i] {
					t.Errorf("row %d: %+v, want %+v", i, socks[i], tc.socks[i])
				}
			}
		})
	}
}

func TestParseSoftnet(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		dropped  uint64
		cpus     int
		err      string
	}{
		{"two cpus", "0000a 00000010 0\n0000b 00000001 0 0\n", 17, 2, ""},
		{"empty", "", 0, 0, "empty"},
		{"one column", "0000a\n", 0, 0, "row 1: 1 columns"},
		{"garbage", "0000a zz\n", 0, 0, "row 1: dropped: not a hexadecimal number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, n, err := parseSoftnet([]byte(tc.in))
			errHas(t, err, tc.err)
			if d != tc.dropped || n != tc.cpus {
				t.Errorf("got %d drops on %d cpus, want %d on %d", d, n, tc.dropped, tc.cpus)
			}
		})
	}
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  string
	}{
		{"0\n", 1, ""}, {"0-3\n", 4, ""}, {"0-3,6,8-9\n", 7, ""}, {"", 0, "empty"},
		{"0-", 0, "not a cpu list"}, {"3-1", 0, "not a cpu list"}, {"a-b", 0, "not a cpu list"},
		{"0,,1", 0, "not a cpu list"}, {"0-4294967295", 0, "implausible"},
	} {
		got, err := parseCPUList([]byte(tc.in))
		errHas(t, err, tc.err)
		if got != tc.want {
			t.Errorf("%q: got %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseCPUInfo(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  string
	}{
		{"processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\n", 2, ""},
		// ARM kernels print "processor" lines too, plus a "Processor" model line.
		{"Processor\t: ARMv7 Processor rev 5 (v7l)\nprocessor\t: 0\nBogoMIPS\t: 38.40\n", 1, ""},
		{"", 0, "empty"}, {"model name: x\n", 0, "no \"processor\" lines"},
	} {
		got, err := parseCPUInfo([]byte(tc.in))
		errHas(t, err, tc.err)
		if got != tc.want {
			t.Errorf("%q: got %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseCapEff(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000000400\n", 0x400, ""},
		{"CapEff:\t000001ffffffffff\n", 0x1ffffffffff, ""},
		{"", 0, "empty"}, {"Name:\tx\n", 0, "no CapEff line"}, {"CapEff:\tnope\n", 0, "not a hexadecimal mask"},
		{"CapEff:\n", 0, "not a hexadecimal mask"},
	} {
		got, err := parseCapEff([]byte(tc.in))
		errHas(t, err, tc.err)
		if got != tc.want {
			t.Errorf("%q: got %#x, want %#x", tc.in, got, tc.want)
		}
	}
}

func TestSocketInodes(t *testing.T) {
	dir := t.TempDir()
	fd := filepath.Join(dir, "proc/1/fd")
	if err := os.MkdirAll(fd, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"0": "/dev/null", "3": "socket:[123]", "4": "socket:[456]", "5": "pipe:[9]",
		"6": "anon_inode:[eventpoll]", "7": "socket:[]", "8": "socket:[12", "9": "socket:[-1]",
	} {
		if err := os.Symlink(target, filepath.Join(fd, name)); err != nil {
			t.Fatal(err)
		}
	}
	// A regular file where a link should be is skipped, not fatal.
	if err := os.WriteFile(filepath.Join(fd, "10"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := socketInodes(os.DirFS(dir), "proc/1/fd")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[123] || !got[456] {
		t.Errorf("got %v, want {123, 456}", got)
	}
	if _, err := socketInodes(os.DirFS(dir), "proc/2/fd"); err == nil {
		t.Error("missing fd directory gave no error")
	}
}
