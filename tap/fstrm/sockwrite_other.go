//go:build !linux

package fstrm

import (
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// rawWriter is Linux-only; elsewhere connections write with net.Conn.Write.
type rawWriter struct{}

func newRawWriter(syscall.Conn, *atomic.Uint64) *rawWriter { return nil }

func (w *rawWriter) write([]byte, net.Conn, time.Time) error { panic("unreachable") }
