package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/tapproxy/tapproxy/internal/server"
	"github.com/tapproxy/tapproxy/listener"
	"github.com/tapproxy/tapproxy/upstream"
)

// tcpFlags are the DNS-over-TCP settings of the serve command. Every bound
// has a flag; each connection a bound closes is counted by reason in the
// final counters (tcp_closed_*).
type tcpFlags struct {
	enable        bool
	maxConns      int
	maxConnsPerIP int
	maxInflight   int
	idle          time.Duration
	read          time.Duration
	write         time.Duration
	lifetime      time.Duration
	maxQueries    int
	maxPending    int
	upConns       int
	upInflight    int
	maxTransfers  int
}

// registerTCPFlags adds the --tcp* flags to fs and returns the function that
// fills cfg.TCP from them once fs has been parsed.
func registerTCPFlags(fs *flag.FlagSet) func(cfg *server.Config) error {
	t := &tcpFlags{}
	fs.BoolVar(&t.enable, "tcp", true, "serve DNS over TCP (RFC 7766) on the --listen addresses too")
	fs.IntVar(&t.maxConns, "tcp-max-conns", listener.DefaultTCPMaxConns, "open TCP client connections (more are closed at accept)")
	fs.IntVar(&t.maxConnsPerIP, "tcp-max-conns-per-ip", listener.DefaultTCPMaxConnsPerIP, "open TCP connections per client address (per /64 for IPv6)")
	fs.IntVar(&t.maxInflight, "tcp-max-inflight", listener.DefaultTCPMaxInflight, "queries in flight per TCP connection (at the cap the connection is not read)")
	fs.DurationVar(&t.idle, "tcp-idle-timeout", listener.DefaultTCPIdleTimeout, "close a TCP connection with nothing outstanding and no complete message for this long (RFC 7766 §6.2.3)")
	fs.DurationVar(&t.read, "tcp-read-timeout", listener.DefaultTCPReadTimeout, "a TCP message whose first byte has arrived must be complete within this")
	fs.DurationVar(&t.write, "tcp-write-timeout", listener.DefaultTCPWriteTimeout, "close a TCP client that does not take queued replies within this")
	fs.DurationVar(&t.lifetime, "tcp-max-lifetime", listener.DefaultTCPMaxLifetime, "end a TCP connection (gracefully) after this long")
	fs.IntVar(&t.maxQueries, "tcp-max-queries", listener.DefaultTCPMaxQueries, "end a TCP connection (gracefully) after this many messages")
	fs.IntVar(&t.maxPending, "tcp-max-pending", listener.DefaultTCPMaxPending, "reply `BYTES` queued for a TCP client that is not reading (at least 65537)")
	fs.IntVar(&t.upConns, "tcp-upstream-conns", upstream.DefaultTCPPoolSize, "pooled TCP connections to the upstream, shared by all TCP clients")
	fs.IntVar(&t.upInflight, "tcp-upstream-inflight", upstream.DefaultTCPConnInflight, "queries pipelined per upstream TCP connection")
	fs.IntVar(&t.maxTransfers, "tcp-max-transfers", upstream.DefaultTCPMaxTransfers, "concurrent zone transfers (AXFR/IXFR), each on its own upstream connection")
	return t.apply
}

func (t *tcpFlags) apply(cfg *server.Config) error {
	if !t.enable {
		cfg.TCP = server.TCPConfig{}
		return nil
	}
	pos := func(name string, v int, lo, hi int) error {
		if v < lo || v > hi {
			return fmt.Errorf("--%s %d: want %d..%d", name, v, lo, hi)
		}
		return nil
	}
	posd := func(name string, d time.Duration) error {
		if d <= 0 {
			return fmt.Errorf("--%s %v: want a positive duration", name, d)
		}
		return nil
	}
	for _, err := range []error{
		pos("tcp-max-conns", t.maxConns, 1, 1<<20),
		pos("tcp-max-conns-per-ip", t.maxConnsPerIP, 1, 1<<20),
		pos("tcp-max-inflight", t.maxInflight, 1, 65535),
		pos("tcp-max-queries", t.maxQueries, 1, 1<<31-1),
		pos("tcp-max-pending", t.maxPending, 65537, 1<<30),
		pos("tcp-upstream-conns", t.upConns, 1, 1024),
		pos("tcp-upstream-inflight", t.upInflight, 1, 65535),
		pos("tcp-max-transfers", t.maxTransfers, 1, 4096),
		posd("tcp-idle-timeout", t.idle),
		posd("tcp-read-timeout", t.read),
		posd("tcp-write-timeout", t.write),
		posd("tcp-max-lifetime", t.lifetime),
	} {
		if err != nil {
			return err
		}
	}
	cfg.TCP = server.TCPConfig{
		Enable: true,
		Client: listener.TCPConfig{
			MaxConns: t.maxConns, MaxConnsPerIP: t.maxConnsPerIP, MaxInflight: t.maxInflight,
			IdleTimeout: t.idle, ReadTimeout: t.read, WriteTimeout: t.write,
			MaxLifetime: t.lifetime, MaxQueries: t.maxQueries, MaxPending: t.maxPending,
		},
		Upstream: upstream.TCPConfig{
			PoolSize: t.upConns, ConnInflight: t.upInflight, MaxTransfers: t.maxTransfers,
			// Pooled connections close after the client idle timeout too.
			IdleTimeout: t.idle,
		},
	}
	return nil
}
