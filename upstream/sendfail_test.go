package upstream

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestSendFailedServfail: a query the upstream socket refuses to send (too
// large once its PROXY v2 header is added: EMSGSIZE) is answered SERVFAIL
// at once with --servfail-on-timeout, and gets nothing without it (as if
// the upstream were silent). Either way it counts as send_failed, once.
func TestSendFailedServfail(t *testing.T) {
	for _, servfail := range []bool{false, true} {
		t.Run(map[bool]string{false: "silent", true: "servfail"}[servfail], func(t *testing.T) {
			up := startFakeUpstream(t, func(c *net.UDPConn, q []byte, from netip.AddrPort) {
				q = stripProxyV2(q)
				q[2] |= 0x80
				_, _ = c.WriteToUDPAddrPort(q, from)
			}, nil)
			h := startHarness(t, func(netip.AddrPort) Config {
				pool, err := NewPool([]Spec{{Addr: up.addr(), Weight: 1, ProxyV2: true}}, FirstAvailable, HealthConfig{FailThreshold: 1 << 30}, nil)
				if err != nil {
					t.Fatal(err)
				}
				return Config{Upstreams: []netip.AddrPort{up.addr()}, Pool: pool, Timeout: 300 * time.Millisecond,
					SocketsPerUpstream: 1, ServfailOnTimeout: servfail}
			}, nil)
			c := dialClient(t, h.client.LocalAddr())
			q := packQuery(t, "big.example.", 0x5151)
			q = append(q, make([]byte, 65500-len(q))...) // fits a datagram, not with the header
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1024)
			// Without SERVFAIL nothing comes: wait past the timeout to be
			// sure no late reply is sent either.
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			if !servfail {
				if err == nil {
					t.Fatalf("got a %d-byte reply, want none", n)
				}
			} else {
				if err != nil {
					t.Fatalf("no SERVFAIL: %v", err)
				}
				m := new(dns.Msg)
				if err := m.Unpack(buf[:n]); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
				if binary.BigEndian.Uint16(buf) != 0x5151 || !m.Response || m.Rcode != dns.RcodeServerFailure ||
					len(m.Question) != 1 || m.Question[0].Name != "big.example." {
					t.Fatalf("reply %v, want SERVFAIL for big.example. with ID 0x5151", m)
				}
			}
			h.stop(t)
			st := h.uw.Stats()
			want := uint64(0)
			if servfail {
				want = 1
			}
			if st.SendFailed.Load() != 1 || st.ServfailSendFailed.Load() != want || st.Forwarded.Load() != 0 {
				t.Fatalf("send_failed=%d servfail_send_failed=%d forwarded=%d, want 1, %d, 0",
					st.SendFailed.Load(), st.ServfailSendFailed.Load(), st.Forwarded.Load(), want)
			}
		})
	}
}
