package reader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	framestream "github.com/farsightsec/golang-framestream"
)

// DefaultHandshakeTimeout bounds the READY/ACCEPT/START exchange with a
// producer, so a peer that connects and says nothing cannot hold a
// goroutine forever.
const DefaultHandshakeTimeout = 10 * time.Second

// finishFrame is the FINISH control frame as golang-framestream writes it
// (escape, length 4, type FINISH) in a single Write after reading STOP.
var finishFrame = []byte{0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, controlFinish}

// ConnInfo describes a producer connection that ended.
type ConnInfo struct {
	Remote string
	Frames int
	// Stopped: the producer sent STOP and was answered with FINISH. False
	// when it closed the connection without STOP (dnsdist does), or when
	// the collector shut down first.
	Stopped bool
	// Err is the handshake or read error that ended the connection, nil
	// for a STOP or a plain close.
	Err error
}

// CollectorStats counts what a Collector saw. Every accepted connection
// ends in exactly one of HandshakeFailed, Stopped, ClosedWithoutStop or
// Aborted; every data frame is either Messages or BadFrames.
type CollectorStats struct {
	Conns             uint64
	HandshakeFailed   uint64
	Stopped           uint64
	ClosedWithoutStop uint64
	Aborted           uint64 // read error or collector shutdown
	Messages          uint64
	BadFrames         uint64 // undecodable or over MaxFrameSize
}

// Collector is the receiving end of bidirectional Frame Streams
// connections (READY → ACCEPT → START, data, STOP → FINISH), as used by
// unbound, dnsdist, named's unix output and fstrm_replay. It accepts only
// the content type ContentType.
type Collector struct {
	// MaxFrameSize caps a data frame (0: DefaultMaxFrameSize). Larger
	// frames are discarded and counted as BadFrames.
	MaxFrameSize int
	// HandshakeTimeout: 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger gets one line per connection event; nil discards.
	Logger *slog.Logger
	// Handle is called for every data frame in arrival order, never
	// concurrently: frame is the payload as received, m the decoded
	// message, or nil with err (wrapping ErrBadDnstap) when it does not
	// decode. index counts data frames over all connections.
	Handle func(index int, frame []byte, m *Message, err error)
	// ConnDone, when set, is called as each producer connection ends.
	ConnDone func(ConnInfo)

	mu     sync.Mutex // serializes Handle and guards the fields below
	frames int
	stats  CollectorStats
	conns  map[net.Conn]struct{}
	closed bool
}

// Stats returns a snapshot of the counters.
func (c *Collector) Stats() CollectorStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Serve accepts producers on ln until ctx is done, then closes ln and every
// open connection and waits for their goroutines. It returns nil after a
// shutdown through ctx, or the Accept error that stopped it.
func (c *Collector) Serve(ctx context.Context, ln net.Listener) error {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c.mu.Lock()
	c.conns = make(map[net.Conn]struct{})
	c.closed = false
	c.mu.Unlock()

	stop := make(chan struct{})
	var closer sync.WaitGroup
	closer.Add(1)
	go func() {
		defer closer.Done()
		select {
		case <-ctx.Done():
		case <-stop:
		}
		c.mu.Lock()
		c.closed = true
		for conn := range c.conns {
			conn.Close()
		}
		c.mu.Unlock()
		ln.Close()
	}()

	var wg sync.WaitGroup
	var err error
	for {
		conn, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting on %s: %w", ln.Addr(), aerr)
			}
			break
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			continue
		}
		c.conns[conn] = struct{}{}
		c.stats.Conns++
		c.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			info := c.serveConn(conn, log)
			c.mu.Lock()
			delete(c.conns, conn)
			c.mu.Unlock()
			conn.Close()
			if c.ConnDone != nil {
				c.ConnDone(info)
			}
		}()
	}
	close(stop)
	closer.Wait()
	wg.Wait()
	return err
}

// finishConn records whether golang-framestream wrote FINISH, the only
// sign that the stream ended with STOP: its Reader returns the same io.EOF
// for STOP and for a plain close.
type finishConn struct {
	net.Conn
	finished atomic.Bool
}

func (f *finishConn) Write(b []byte) (int, error) {
	if bytes.Equal(b, finishFrame) {
		f.finished.Store(true)
	}
	return f.Conn.Write(b)
}

func (c *Collector) serveConn(conn net.Conn, log *slog.Logger) ConnInfo {
	info := ConnInfo{Remote: conn.RemoteAddr().String()}
	if info.Remote == "" || info.Remote == "@" {
		info.Remote = "unix:" + conn.LocalAddr().String()
	}
	timeout := c.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	fc := &finishConn{Conn: conn}
	r, err := framestream.NewReader(fc, &framestream.ReaderOptions{
		ContentTypes:  [][]byte{[]byte(ContentType)},
		Bidirectional: true,
		Timeout:       timeout,
	})
	if err != nil {
		info.Err = fmt.Errorf("handshake with %s: %w", info.Remote, err)
		c.mu.Lock()
		shutdown := c.closed
		if shutdown {
			c.stats.Aborted++ // cut short by our shutdown, not the producer's fault
		} else {
			c.stats.HandshakeFailed++
		}
		c.mu.Unlock()
		if !shutdown {
			log.Warn("producer handshake failed", "remote", info.Remote, "err", err)
		}
		return info
	}
	log.Info("producer connected", "remote", info.Remote)
	max := c.MaxFrameSize
	if max <= 0 {
		max = DefaultMaxFrameSize
	}
	buf := make([]byte, max)
	for {
		n, err := r.ReadFrame(buf)
		if errors.Is(err, framestream.ErrDataFrameTooLarge) {
			info.Frames++
			c.deliver(nil, nil, fmt.Errorf("%w: larger than the limit of %d bytes", ErrBadDnstap, max))
			continue
		}
		if err != nil {
			switch {
			case errors.Is(err, io.EOF) && fc.finished.Load():
				info.Stopped = true
				c.count(func(s *CollectorStats) { s.Stopped++ })
			case errors.Is(err, io.EOF):
				c.count(func(s *CollectorStats) { s.ClosedWithoutStop++ })
			default:
				info.Err = err
				c.count(func(s *CollectorStats) { s.Aborted++ })
			}
			log.Info("producer disconnected", "remote", info.Remote, "frames", info.Frames, "stopped", info.Stopped, "err", info.Err)
			return info
		}
		info.Frames++
		frame := append([]byte(nil), buf[:n]...)
		m, derr := decodeMessage(frame, 0)
		if derr != nil {
			derr = fmt.Errorf("%w: %w", ErrBadDnstap, derr)
		}
		c.deliver(frame, m, derr)
	}
}

func (c *Collector) count(f func(*CollectorStats)) {
	c.mu.Lock()
	f(&c.stats)
	c.mu.Unlock()
}

func (c *Collector) deliver(frame []byte, m *Message, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := c.frames
	c.frames++
	if err != nil {
		c.stats.BadFrames++
	} else {
		c.stats.Messages++
		m.Frame = idx
	}
	if c.Handle != nil {
		c.Handle(idx, frame, m, err)
	}
}
