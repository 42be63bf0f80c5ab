package listener

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message by hand, as the kernel lays it out.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestParseControl(t *testing.T) {
	ts := make([]byte, 16)
	binary.NativeEndian.PutUint64(ts, 1700000000)
	binary.NativeEndian.PutUint64(ts[8:], 123456789)
	pk4 := make([]byte, unix.SizeofInet4Pktinfo)
	binary.NativeEndian.PutUint32(pk4, 7)
	copy(pk4[4:8], []byte{9, 9, 9, 9}) // spec_dst: must be ignored
	copy(pk4[8:12], []byte{127, 0, 0, 2})
	pk6 := make([]byte, unix.SizeofInet6Pktinfo)
	a6 := netip.MustParseAddr("fe80::1").As16()
	copy(pk6, a6[:])
	binary.NativeEndian.PutUint32(pk6[16:], 3)
	ovfl := make([]byte, 4)
	binary.NativeEndian.PutUint32(ovfl, 42)

	tests := []struct {
		name    string
		oob     []byte
		ts      int64
		local   string
		ifindex uint32
		drops   uint32
		dropsOK bool
	}{
		{"empty", nil, 0, "", 0, 0, false},
		{"timestamp only", cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, ts), 1700000000123456789, "", 0, 0, false},
		{"v4 all", append(append(cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, ts), cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, pk4)...), cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, ovfl)...),
			1700000000123456789, "127.0.0.2", 7, 42, true},
		{"v6 pktinfo", cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, pk6), 0, "fe80::1", 3, 0, false},
		{"unknown cmsg skipped", append(cmsg(unix.SOL_SOCKET, 99, []byte{1, 2, 3}), cmsg(unix.SOL_SOCKET, unix.SO_RXQ_OVFL, ovfl)...), 0, "", 0, 42, true},
		{"short pktinfo ignored", cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, pk4[:4]), 0, "", 0, 0, false},
		{"garbage length stops walk", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, 0, "", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gotTS, local, ifi, drops, ok := ParseControl(tc.oob)
			var wantLocal netip.Addr
			if tc.local != "" {
				wantLocal = netip.MustParseAddr(tc.local)
			}
			if gotTS != tc.ts || local != wantLocal || ifi != tc.ifindex || drops != tc.drops || ok != tc.dropsOK {
				t.Errorf("got ts=%d local=%v if=%d drops=%d/%v", gotTS, local, ifi, drops, ok)
			}
		})
	}
}

func TestPutPktinfoRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		addr string
		v6   bool
		ifi  uint32
	}{{"127.0.0.9", false, 0}, {"::1", true, 1}} {
		oob := make([]byte, oobSize)
		n := putPktinfo(oob, netip.MustParseAddr(tc.addr), tc.ifi, tc.v6)
		if n == 0 {
			t.Fatal("no cmsg written")
		}
		h, data, _, err := unix.ParseOneSocketControlMessage(oob[:n])
		if err != nil {
			t.Fatal(err)
		}
		if tc.v6 {
			if h.Level != unix.IPPROTO_IPV6 || h.Type != unix.IPV6_PKTINFO || netip.AddrFrom16([16]byte(data[:16])).String() != tc.addr {
				t.Errorf("v6 pktinfo wrong: %+v % x", h, data)
			}
		} else if h.Level != unix.IPPROTO_IP || h.Type != unix.IP_PKTINFO || netip.AddrFrom4([4]byte(data[4:8])).String() != tc.addr {
			t.Errorf("v4 pktinfo wrong: %+v % x", h, data)
		}
	}
}

func TestACL(t *testing.T) {
	def, err := ParseACL(DefaultAllow)
	if err != nil {
		t.Fatal(err)
	}
	only, _ := ParseACL([]string{"127.0.0.2/32, 2001:db8::/32"})
	host, _ := ParseACL([]string{"192.0.2.7"})
	tests := []struct {
		acl  *ACL
		addr string
		want bool
	}{
		{def, "127.0.0.1", true}, {def, "10.1.2.3", true}, {def, "172.31.255.255", true}, {def, "172.32.0.1", false},
		{def, "192.168.1.1", true}, {def, "100.64.0.1", true}, {def, "100.128.0.1", false}, {def, "169.254.1.1", true},
		{def, "::1", true}, {def, "fe80::1", true}, {def, "fd00::1", true}, {def, "2001:db8::1", false},
		{def, "8.8.8.8", false}, {def, "::ffff:10.0.0.1", true}, {def, "::ffff:8.8.8.8", false},
		{only, "127.0.0.2", true}, {only, "127.0.0.1", false}, {only, "2001:db8:1::1", true},
		{host, "192.0.2.7", true}, {host, "192.0.2.8", false},
		{AllowAll(), "203.0.113.1", true},
	}
	for _, tc := range tests {
		if got := tc.acl.Allowed(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%s: got %v want %v", tc.addr, got, tc.want)
		}
	}
	if _, err := ParseACL([]string{"not-a-cidr"}); err == nil {
		t.Error("bad entry accepted")
	}
}

// TestBatchIOLoopback sends through a Writer to a listening Conn and reads
// the batch back: addresses, pktinfo and kernel timestamps are right, and
// neither side allocates per packet.
func TestBatchIOLoopback(t *testing.T) {
	for _, tc := range []struct{ listen, dst, src string }{
		{"0.0.0.0:0", "127.0.0.3", "127.0.0.1"},
		{"[::]:0", "::1", "::1"},
		{"127.0.0.1:0", "127.0.0.1", "127.0.0.1"},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			ctx := context.Background()
			srv, err := ListenUDP(ctx, netip.MustParseAddrPort(tc.listen), Options{ReusePort: true, PktInfo: true})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			f := srv.Features()
			if !f.Timestamps || !f.PktInfo || !f.DropCounter || len(f.Warnings) != 0 {
				t.Fatalf("features: %+v", f)
			}
			dst := netip.AddrPortFrom(netip.MustParseAddr(tc.dst), srv.LocalAddr().Port())
			cli, err := DialUDP(ctx, dst, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			out := NewBatch(4, 64)
			for i := range out.Pkts {
				out.Pkts[i].N = 20 + i
				out.Pkts[i].Buf[0] = byte(i)
			}
			w := cli.NewWriter(4)
			in := NewBatch(8, MaxDatagram)
			r := srv.NewReader(in)
			_ = srv.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
			before := time.Now().UnixNano()
			if failed, err := w.Write(out.Pkts); failed != 0 || err != nil {
				t.Fatalf("write: %d %v", failed, err)
			}
			got := 0
			for got < 4 {
				n, err := r.Read()
				if err != nil {
					t.Fatal(err)
				}
				after := time.Now().UnixNano()
				for i := 0; i < n; i++ {
					p := in.Pkts[i]
					if p.N != 20+int(p.Buf[0]) {
						t.Errorf("packet %d: len %d", p.Buf[0], p.N)
					}
					if p.Peer != cli.LocalAddr() && p.Peer.Addr().String() != tc.src {
						t.Errorf("peer %v, want %v", p.Peer, cli.LocalAddr())
					}
					if p.Local.String() != tc.dst {
						t.Errorf("local %v, want %v", p.Local, tc.dst)
					}
					if p.KernelTime < before || p.KernelTime > after {
						t.Errorf("kernel time %d not within [%d, %d]", p.KernelTime, before, after)
					}
				}
				got += n
			}
			// Reply from the server to the client: on a wildcard bind the
			// source must be the address the client asked (pktinfo).
			reply := NewBatch(1, 64)
			reply.Pkts[0] = Packet{Buf: reply.Pkts[0].Buf, N: 12, Peer: in.Pkts[0].Peer, Local: in.Pkts[0].Local, IfIndex: in.Pkts[0].IfIndex}
			sw := srv.NewWriter(1)
			if failed, err := sw.Write(reply.Pkts); failed != 0 || err != nil {
				t.Fatalf("reply: %v", err)
			}
			cin := NewBatch(1, 128)
			cr := cli.NewReader(cin)
			_ = cli.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := cr.Read(); err != nil || n != 1 {
				t.Fatalf("client read: %d %v", n, err)
			}
			// The client socket is connected to dst: the kernel delivers
			// the reply only if it came from dst's address and port.
			if cin.Pkts[0].Peer != dst {
				t.Errorf("reply from %v, want %v", cin.Pkts[0].Peer, dst)
			}

			allocs := testing.AllocsPerRun(200, func() {
				if _, err := w.Write(out.Pkts[:1]); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Read(); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("batch write+read allocates %v per run", allocs)
			}
		})
	}
}
