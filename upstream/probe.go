package upstream

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/tapproxy/tapproxy/internal/dnswire"
)

// RunProbes sends active health probes until ctx is done: every
// ProbeInterval, one probe to each upstream that is down (every upstream
// when ProbeAlways). A probe is good when an answer with the probe's ID and
// question arrives within the interval (at most 2 s) with any rcode but
// SERVFAIL: REFUSED or NXDOMAIN still prove the server is alive and
// answering. One goroutine per upstream; it blocks until they exit.
func (p *Pool) RunProbes(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range p.ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(p.hc.ProbeInterval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if !p.hc.ProbeAlways && u.Up() {
					continue
				}
				p.ProbeResult(u, p.probe(ctx, u))
			}
		}()
	}
	wg.Wait()
}

// probe sends one probe query to u and reports whether it was good.
func (p *Pool) probe(ctx context.Context, u *Upstream) bool {
	timeout := min(p.hc.ProbeInterval, 2*time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", u.Addr.String())
	if err != nil {
		return false
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(p.hc.ProbeName), p.hc.ProbeType)
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	m.Id = binary.BigEndian.Uint16(idb[:])
	q, err := m.Pack()
	if err != nil {
		return false
	}
	out := q
	if u.ProxyV2 {
		la := c.LocalAddr().(*net.UDPAddr).AddrPort()
		out = append(AppendProxyV2(nil, la, u.Addr, false), q...)
	}
	if _, err := c.Write(out); err != nil {
		return false
	}
	var want dnswire.Question
	if dnswire.ParseQuestion(q, &want) != nil {
		return false
	}
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return false
		}
		r := buf[:n]
		h, ok := dnswire.ParseHeader(r)
		if !ok || !h.QR() || h.ID != m.Id {
			continue
		}
		var got dnswire.Question
		if dnswire.ParseQuestion(r, &got) != nil || !got.Equal(&want) {
			if !(h.QDCount == 0 && dnswire.IsErrorRcode(h.Rcode())) {
				continue
			}
		}
		return h.Rcode() != dnswire.RcodeServFail
	}
}
