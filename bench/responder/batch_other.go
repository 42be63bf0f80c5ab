//go:build !linux

package responder

import (
	"fmt"
	"net"
	"syscall"
)

// reusePort is a no-op off Linux: a second socket on the same port then
// fails to bind, which Listen reports.
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }

// setBuffers uses the portable buffer setters.
func setBuffers(c *net.UDPConn, rcv, snd int) error {
	if rcv > 0 {
		if err := c.SetReadBuffer(rcv); err != nil {
			return err
		}
	}
	if snd > 0 {
		return c.SetWriteBuffer(snd)
	}
	return nil
}

// serveConn is one worker, one datagram per syscall (no recvmmsg here).
// ReadFromUDPAddrPort and WriteToUDPAddrPort do not allocate.
func serveConn(c *net.UDPConn, z *Zone, ctr *counters, _ int) error {
	rbuf := make([]byte, readBufLen)
	wbuf := make([]byte, MaxAnswerLen)
	for {
		n, from, err := c.ReadFromUDPAddrPort(rbuf)
		if err != nil {
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("reading: %w", err)
		}
		ctr.received.Add(1)
		if n == len(rbuf) {
			ctr.truncated.Add(1)
			continue
		}
		m, o := z.Answer(wbuf, rbuf[:n])
		ctr.outcomes[o].Add(1)
		if m == 0 {
			continue
		}
		if _, err := c.WriteToUDPAddrPort(wbuf[:m], from); err != nil {
			if isClosed(err) {
				return nil
			}
			ctr.sendFailed.Add(1)
			continue
		}
		ctr.sent.Add(1)
	}
}
