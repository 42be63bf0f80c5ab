//go:build !linux

package tuning

import (
	"errors"
	"fmt"
)

// LiveProber reports every option as unsupported off Linux: tapproxy's
// socket layer is Linux-only (recvmmsg, SO_RXQ_OVFL, SO_TIMESTAMPNS cmsgs).
type LiveProber struct{}

// Probe implements Prober.
func (LiveProber) Probe(opt SockOpt) error {
	return fmt.Errorf("%s: %w (not Linux)", opt, errors.ErrUnsupported)
}
