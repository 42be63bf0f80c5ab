// flood sends DNS queries (the bench/run.sh mix under bench.test.) to a
// loopback ADDR at RATE per second for DURATION, paced every millisecond,
// from 4 connected sockets with sendmmsg(2) in batches of up to 64, never
// waiting for answers (they are read and counted). It prints
// "sent N replies R send_errors E skipped K seconds S" at the end; skipped
// counts queries it fell behind on and never sent.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const batch = 64

// mmsghdr is struct mmsghdr on 64-bit Linux.
type mmsghdr struct {
	hdr syscall.Msghdr
	n   uint32
	_   [4]byte
}

func query(i int) []byte {
	labels := []string{fmt.Sprintf("host%d", i), "bench", "test"}
	if i%10 >= 8 {
		labels = []string{fmt.Sprintf("miss%d", i), "nx", "bench", "test"}
	}
	q := []byte{0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0} // RD; QDCOUNT 1
	for _, l := range labels {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	qtype := byte(1) // A
	if i%10 >= 4 && i%10 < 7 {
		qtype = 28 // AAAA
	}
	return append(q, 0, 0, qtype, 0, 1)
}

func main() {
	addr := flag.String("addr", "", "loopback ADDR:PORT")
	rate := flag.Int("rate", 0, "queries per second")
	dur := flag.Duration("duration", 0, "how long")
	flag.Parse()
	to, err := netip.ParseAddrPort(*addr)
	if err != nil || !to.Addr().IsLoopback() || *rate <= 0 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "flood: want -addr LOOPBACK:PORT -rate N -duration D")
		os.Exit(2)
	}
	qs := make([][]byte, 10000)
	for i := range qs {
		qs[i] = query(i)
	}
	var raws []syscall.RawConn
	var replies atomic.Uint64
	for k := 0; k < 4; k++ {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			fmt.Fprintln(os.Stderr, "flood:", err)
			os.Exit(1)
		}
		rc, err := c.SyscallConn()
		if err != nil {
			fmt.Fprintln(os.Stderr, "flood:", err)
			os.Exit(1)
		}
		raws = append(raws, rc)
		go func() {
			buf := make([]byte, 65536)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				replies.Add(1)
			}
		}()
	}
	sysSendmmsg := map[string]uintptr{"amd64": 307, "arm64": 269, "riscv64": 269, "ppc64le": 349, "s390x": 358}[runtime.GOARCH]
	if sysSendmmsg == 0 {
		fmt.Fprintln(os.Stderr, "flood: no sendmmsg number for", runtime.GOARCH)
		os.Exit(1)
	}
	var msgs [batch]mmsghdr
	var iovs [batch]syscall.Iovec
	// pos counts datagrams handed to sendmmsg (sent or failed), skipped
	// the ones the pacing gave up on.
	var pos, sent, skipped, errs uint64
	start := time.Now()
	for k := 0; ; k++ {
		el := time.Since(start)
		if el >= *dur {
			break
		}
		due := uint64(el.Seconds()*float64(*rate)) - skipped
		// After a stall, catch up by at most 10 ms worth at once.
		if burst := uint64(*rate/100 + 1); due > pos+burst {
			skipped += due - pos - burst
			due = pos + burst
		}
		for pos < due {
			n := int(min(due-pos, batch))
			for j := 0; j < n; j++ {
				q := qs[int(pos+uint64(j))%len(qs)]
				binary.BigEndian.PutUint16(q, uint16(pos+uint64(j)))
				iovs[j] = syscall.Iovec{Base: &q[0], Len: uint64(len(q))}
				msgs[j].hdr = syscall.Msghdr{Iov: &iovs[j], Iovlen: 1}
			}
			done, failed := 0, false
			_ = raws[k%len(raws)].Write(func(fd uintptr) bool {
				r, _, e := syscall.Syscall6(sysSendmmsg, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
				if e == syscall.EAGAIN {
					return false // wait until writable
				}
				done, failed = int(r), e != 0 || int(r) <= 0
				return true
			})
			if failed { // the first datagram of the batch failed: count it, go on
				errs++
				pos++
				continue
			}
			sent += uint64(done)
			pos += uint64(done)
		}
		time.Sleep(time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	time.Sleep(200 * time.Millisecond) // the last replies
	fmt.Printf("sent %d replies %d send_errors %d skipped %d seconds %.3f\n", sent, replies.Load(), errs, skipped, secs)
}
