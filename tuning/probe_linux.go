package tuning

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// LiveProber probes the running kernel: each Probe opens a UDP socket that
// is never bound, sets the option, reads it back and closes the socket.
type LiveProber struct{}

var sockOpts = map[SockOpt]int{
	OptReusePort:    unix.SO_REUSEPORT,
	OptTimestampNS:  unix.SO_TIMESTAMPNS,
	OptRxqOverflows: unix.SO_RXQ_OVFL,
}

// Probe implements Prober.
func (LiveProber) Probe(opt SockOpt) error {
	num, ok := sockOpts[opt]
	if !ok {
		return fmt.Errorf("%s: unknown option", opt)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening a probe socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, num, 1); err != nil {
		return fmt.Errorf("setting %s: %w", opt, err)
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, num)
	if err != nil {
		return fmt.Errorf("reading %s back: %w", opt, err)
	}
	if v == 0 {
		return fmt.Errorf("%s: set, but reads back 0", opt)
	}
	return nil
}
