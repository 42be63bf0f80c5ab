// Command wakeecho is a measuring instrument, not part of tapproxy: a DNS
// "echo" (it returns each query with QR set) whose only variable is how it
// waits for datagrams, to price one wake-up of a Go program on a given
// machine. bench/RESULTS.md ("Where the time goes at 20 000 qps") runs it
// under dnsperf at a fixed rate, pinned to one CPU, and compares the CPU
// time of the modes:
//
//	poll        the netpoller, as tapproxy's readers do (listener.ReadLoop:
//	            a short batch goes straight back to waiting)
//	poll-drain  the netpoller, reading until EAGAIN before waiting
//	block       a blocking recvmmsg through syscall.Syscall on a socket
//	            outside the netpoller (set GOMAXPROCS to give it its own P)
//	rawblock    the same through RawSyscall: the floor of a blocking
//	            design, but unusable as is, since the thread holds its P
//	            while blocked (no garbage collection until a datagram comes)
//
// Linux only; loopback only (the address must be on 127.0.0.0/8).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const batch = 64

type mmsg struct {
	bufs  [batch][512]byte
	names [batch]unix.RawSockaddrInet6
	iov   [batch]unix.Iovec
	hdr   [batch]unix.Mmsghdr
}

func (m *mmsg) prepare() {
	for i := range m.hdr {
		m.iov[i].Base = &m.bufs[i][0]
		m.iov[i].SetLen(len(m.bufs[i]))
		h := &m.hdr[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&m.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &m.iov[i]
		h.SetIovlen(1)
		m.hdr[i].Len = 0
	}
}

// answer sets QR on the n datagrams read and sends them back in one sendmmsg.
func (m *mmsg) answer(fd uintptr, n int) {
	for i := 0; i < n; i++ {
		if m.hdr[i].Len >= 12 {
			m.bufs[i][2] |= 0x80
		}
		m.iov[i].SetLen(int(m.hdr[i].Len))
	}
	_, _, _ = unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.hdr[0])), uintptr(n), unix.MSG_DONTWAIT, 0, 0)
}

func main() {
	mode := flag.String("mode", "poll", "poll, poll-drain, block or rawblock")
	addr := flag.String("listen", "127.0.0.1:15520", "loopback address and port")
	flag.Parse()
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
		fmt.Fprintln(os.Stderr, "wakeecho: -listen must be an IPv4 loopback address and port")
		os.Exit(2)
	}
	m := new(mmsg)
	switch *mode {
	case "poll", "poll-drain":
		err = servePoll(m, ap, *mode == "poll-drain")
	case "block", "rawblock":
		err = serveBlocking(m, ap, *mode == "rawblock")
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	fmt.Fprintln(os.Stderr, "wakeecho:", err)
	os.Exit(1)
}

func servePoll(m *mmsg, ap netip.AddrPort, drain bool) error {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	fn := func(fd uintptr) bool {
		for {
			m.prepare()
			n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.hdr[0])), batch, unix.MSG_DONTWAIT, 0, 0)
			if e != 0 {
				return false // EAGAIN: wait in the netpoller
			}
			m.answer(fd, int(n))
			if int(n) < batch && !drain {
				return false
			}
		}
	}
	for {
		if err := rc.Read(fn); err != nil {
			return err
		}
	}
}

func serveBlocking(m *mmsg, ap netip.AddrPort, raw bool) error {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return err
	}
	call := syscall.Syscall6
	if raw {
		call = syscall.RawSyscall6
	}
	for {
		m.prepare()
		n, _, e := call(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.hdr[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if e != 0 {
			continue
		}
		m.answer(uintptr(fd), int(n))
	}
}
