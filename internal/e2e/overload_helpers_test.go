//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helpers of the overload and outage tests (overload_test.go,
// outstanding_test.go, outage_test.go, impair_test.go): Prometheus scrapes
// of tapproxy's --metrics endpoint, RSS from /proc, sockets created inside
// a network namespace, a minimal answering upstream and an impairment relay.

// promSnap is one scrape of /metrics: series (name plus labels, as
// exposed) to value.
type promSnap map[string]float64

// get sums every series of metric name (all label sets).
func (p promSnap) get(name string) float64 {
	var s float64
	for k, v := range p {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// getWhere sums the series of name whose labels contain label (e.g.
// `kind="client"`).
func (p promSnap) getWhere(name, label string) float64 {
	var s float64
	for k, v := range p {
		if strings.HasPrefix(k, name+"{") && strings.Contains(k, label) {
			s += v
		}
	}
	return s
}

// u returns get(name) as an integer (counters and gauges of counts).
func (p promSnap) u(name string) uint64 { return uint64(p.get(name)) }

// scraper reads tapproxy's /metrics, over loopback or from inside a
// network namespace (the dial happens there).
type scraper struct {
	url    string
	client *http.Client
}

func newScraper(addr string) *scraper {
	return &scraper{url: "http://" + addr + "/metrics", client: &http.Client{Timeout: 10 * time.Second}}
}

// newScraperInNetns scrapes a tapproxy that runs inside namespace ns: each
// connection is dialled from a thread that entered ns.
func newScraperInNetns(ns, addr string) *scraper {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return dialInNetns(ctx, ns, network, a)
		},
		DisableKeepAlives: true,
	}
	return &scraper{url: "http://" + addr + "/metrics", client: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
}

// scrape returns the current metrics. It never calls t.Fatal, so sampler
// goroutines may use it.
func (s *scraper) scrape() (promSnap, error) {
	resp, err := s.client.Get(s.url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", s.url, resp.Status)
	}
	snap := promSnap{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		snap[l[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := snap["tapproxy_received_total"]; !ok {
		return nil, fmt.Errorf("GET %s: no tapproxy_received_total in the scrape", s.url)
	}
	return snap, nil
}

func (s *scraper) must(t testing.TB) promSnap {
	t.Helper()
	p, err := s.scrape()
	if err != nil {
		t.Fatalf("scraping tapproxy metrics: %v", err)
	}
	return p
}

// waitMetrics scrapes (bounded by limit) until cond holds and returns that
// scrape; it fails the test with the last scrape's figures otherwise. It
// polls a condition; it does not stand in for a signal.
func (s *scraper) waitMetrics(t testing.TB, what string, limit time.Duration, cond func(promSnap) bool) promSnap {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		p := s.must(t)
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not reached within %v; last scrape: %s", what, limit, p.summary())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// summary renders the fate counters of a scrape for failure messages.
func (p promSnap) summary() string {
	var b strings.Builder
	for _, k := range []string{"received", "dropped_inflight_full", "forwarded", "answered", "timed_out",
		"servfail_sent", "send_failed", "resp_received", "resp_matched", "resp_late", "resp_unknown_id",
		"resp_question_mismatch", "resp_wrong_source", "kernel_drops"} {
		fmt.Fprintf(&b, "%s=%d ", k, p.u("tapproxy_"+k+"_total"))
	}
	fmt.Fprintf(&b, "in_flight=%d client_kernel_drops=%d goroutines=%d", p.u("tapproxy_in_flight"),
		uint64(p.getWhere("tapproxy_socket_kernel_drops_total", `kind="client"`)), p.u("go_goroutines"))
	return b.String()
}

// clientKernelDrops is the SO_RXQ_OVFL count of tapproxy's client sockets.
// The kernel reports it with the next datagram a socket receives, so it
// is current once a datagram has arrived after the drops.
func (p promSnap) clientKernelDrops() uint64 {
	return uint64(p.getWhere("tapproxy_socket_kernel_drops_total", `kind="client"`))
}

// rssKiB is VmRSS of pid in KiB (0 when unreadable: the process exited).
func rssKiB(pid int) uint64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// sample is one reading of the sampler.
type sample struct {
	at                                        time.Duration
	rssKiB, goroutines, inFlight, kernelDrops uint64
	droppedFull, received                     uint64
}

func (s sample) String() string {
	return fmt.Sprintf("t=%4.1fs rss=%6d KiB goroutines=%3d in_flight=%5d kernel_drops=%8d dropped_inflight_full=%8d received=%9d",
		s.at.Seconds(), s.rssKiB, s.goroutines, s.inFlight, s.kernelDrops, s.droppedFull, s.received)
}

// sampler scrapes tapproxy every interval in its own goroutine until
// stopped; errors are kept, never reported from the goroutine.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	err     error
	stop    chan struct{}
	done    chan struct{}
}

func startSampler(s *scraper, pid int, every time.Duration) *sampler {
	sm := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(sm.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			p, err := s.scrape()
			sm.mu.Lock()
			if err != nil {
				if sm.err == nil {
					sm.err = err
				}
			} else {
				sm.samples = append(sm.samples, sample{
					at: time.Since(start), rssKiB: rssKiB(pid), goroutines: p.u("go_goroutines"),
					inFlight: p.u("tapproxy_in_flight"), kernelDrops: p.u("tapproxy_kernel_drops_total"),
					droppedFull: p.u("tapproxy_dropped_inflight_full_total"), received: p.u("tapproxy_received_total"),
				})
			}
			sm.mu.Unlock()
			select {
			case <-sm.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return sm
}

// finish stops the sampler and returns its samples; a scrape error fails
// the test.
func (sm *sampler) finish(t testing.TB) []sample {
	t.Helper()
	close(sm.stop)
	<-sm.done
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if sm.err != nil {
		t.Fatalf("sampling tapproxy's metrics: %v", sm.err)
	}
	if len(sm.samples) == 0 {
		t.Fatal("sampler took no sample")
	}
	return append([]sample(nil), sm.samples...)
}

// maxOf returns the largest value of f over the samples.
func maxOf(ss []sample, f func(sample) uint64) uint64 {
	var m uint64
	for _, s := range ss {
		m = max(m, f(s))
	}
	return m
}

// inNetns runs f on a locked OS thread that has entered network namespace
// ns ("" runs it here). The thread is never unlocked, so it dies with the
// goroutine and no other goroutine ever runs in ns. Sockets keep the
// namespace they were created in.
func inNetns(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		fd, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- err
			return
		}
		defer fd.Close()
		if err := unix.Setns(int(fd.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ch <- f()
	}()
	return <-ch
}

// listenUDPIn binds a UDP socket to addr inside namespace ns ("": here).
func listenUDPIn(ns string, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}

func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// answerServer is a minimal upstream on a socket the test opened (in any
// namespace): every well-formed query gets answerA, byte for byte
// predictable from the query. It counts what it read and sent.
type answerServer struct {
	conn           *net.UDPConn
	received, sent atomic.Uint64
	done           chan struct{}
}

func serveAnswers(t testing.TB, conn *net.UDPConn) *answerServer {
	s := &answerServer{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.received.Add(1)
			if a := answerA(buf[:n], "192.0.2.53"); a != nil {
				if _, err := conn.WriteToUDPAddrPort(a, from); err == nil {
					s.sent.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-s.done })
	return s
}

// impairConfig is what the relay does to every datagram, in each
// direction: drop it with probability drop; otherwise deliver it after
// minDelay plus a uniform jitter (so datagrams overtake each other), and
// with probability dup deliver a second copy after its own delay.
type impairConfig struct {
	seed             uint64
	drop, dup        float64
	minDelay, jitter time.Duration
}

// impairRelay sits between tapproxy and its upstream: tapproxy's upstream
// address is the relay's front socket. Each tapproxy source socket gets
// its own back socket towards the upstream, so answers go back to the
// socket (and port) the query came from. The randomness is seeded: the
// same seed gives the same sequence of decisions (timing still varies).
type impairRelay struct {
	cfg     impairConfig
	front   *net.UDPConn
	up      netip.AddrPort
	newBack func() (*net.UDPConn, error)

	mu     sync.Mutex
	rng    *rand.Rand
	backs  map[netip.AddrPort]*net.UDPConn
	closed bool
	errs   []error

	readers sync.WaitGroup
	pending atomic.Int64
	// Delivered datagrams, per direction, and what was dropped or
	// duplicated.
	toUp, toProxy, dropped, duplicated atomic.Uint64
}

// startImpairRelay relays between front (tapproxy's side) and up; newBack
// opens a socket that can reach up (in the upstream's namespace).
func startImpairRelay(t testing.TB, cfg impairConfig, front *net.UDPConn, up netip.AddrPort, newBack func() (*net.UDPConn, error)) *impairRelay {
	r := &impairRelay{cfg: cfg, front: front, up: up, newBack: newBack,
		rng: rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x5851f42d4c957f2d)), backs: map[netip.AddrPort]*net.UDPConn{}}
	r.readers.Add(1)
	go r.readFront()
	t.Cleanup(func() {
		r.mu.Lock()
		r.closed = true
		r.front.Close()
		for _, b := range r.backs {
			b.Close()
		}
		r.mu.Unlock()
		r.readers.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, err := range r.errs {
			t.Errorf("impairment relay: %v", err)
		}
	})
	return r
}

func (r *impairRelay) fail(err error) {
	r.mu.Lock()
	if !r.closed {
		r.errs = append(r.errs, err)
	}
	r.mu.Unlock()
}

// plan decides the fate of one datagram: the delays of its copies (none:
// dropped).
func (r *impairRelay) plan() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	delay := func() time.Duration {
		d := r.cfg.minDelay
		if r.cfg.jitter > 0 {
			d += time.Duration(r.rng.Int64N(int64(r.cfg.jitter)))
		}
		return d
	}
	if r.rng.Float64() < r.cfg.drop {
		r.dropped.Add(1)
		return nil
	}
	out := []time.Duration{delay()}
	if r.rng.Float64() < r.cfg.dup {
		r.duplicated.Add(1)
		out = append(out, delay())
	}
	return out
}

// schedule sends b with send after each planned delay.
func (r *impairRelay) schedule(b []byte, send func([]byte) error, ctr *atomic.Uint64) {
	for _, d := range r.plan() {
		r.pending.Add(1)
		time.AfterFunc(d, func() {
			defer r.pending.Add(-1)
			if err := send(b); err == nil {
				ctr.Add(1)
			} else if !errors.Is(err, net.ErrClosed) {
				r.fail(err)
			}
		})
	}
}

func (r *impairRelay) readFront() {
	defer r.readers.Done()
	buf := make([]byte, 65536)
	for {
		n, src, err := r.front.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.fail(fmt.Errorf("front read: %w", err))
			}
			return
		}
		back, err := r.back(src)
		if err != nil {
			r.fail(err)
			return
		}
		if back == nil {
			return // closed
		}
		b := append([]byte(nil), buf[:n]...)
		r.schedule(b, func(b []byte) error { _, err := back.WriteToUDPAddrPort(b, r.up); return err }, &r.toUp)
	}
}

// back returns the back socket for tapproxy's socket src, opening it (and
// its reader) on first use.
func (r *impairRelay) back(src netip.AddrPort) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, nil
	}
	if b, ok := r.backs[src]; ok {
		return b, nil
	}
	b, err := r.newBack()
	if err != nil {
		return nil, fmt.Errorf("opening a back socket: %w", err)
	}
	r.backs[src] = b
	r.readers.Add(1)
	go func() {
		defer r.readers.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := b.ReadFromUDPAddrPort(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					r.fail(fmt.Errorf("back read: %w", err))
				}
				return
			}
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != r.up {
				continue
			}
			a := append([]byte(nil), buf[:n]...)
			r.schedule(a, func(a []byte) error { _, err := r.front.WriteToUDPAddrPort(a, src); return err }, &r.toProxy)
		}
	}()
	return b, nil
}

// waitIdle waits (bounded) until nothing is scheduled: every datagram the
// relay took has been delivered or dropped.
func (r *impairRelay) waitIdle(t testing.TB, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for r.pending.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("impairment relay still has %d datagrams scheduled after %v", r.pending.Load(), limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// replyLog records, per client socket, every datagram it received.
type replyLog struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  [][]byte
	done chan struct{}
}

func logReplies(t testing.TB, conn *net.UDPConn) *replyLog {
	l := &replyLog{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			l.mu.Lock()
			l.got = append(l.got, append([]byte(nil), buf[:n]...))
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-l.done })
	return l
}

func (l *replyLog) replies() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.got...)
}

func (l *replyLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.got)
}

// rcodeOf is the header rcode of a message of at least 4 bytes.
func rcodeOf(b []byte) int { return int(b[3] & 0xF) }

// numberedQuery is a raw A query for "<prefix><digits>.<suffix>" whose
// digits and ID a sender patches in place: building 100 000 queries with
// miekg/dns would cost more than sending them.
type numberedQuery struct {
	b      []byte
	digits int // offset of the digits
	width  int
}

func newNumberedQuery(prefix string, width int, suffix string) numberedQuery {
	name := wireName(prefix + strings.Repeat("0", width) + "." + suffix)
	q := rawQuery(0, rd, 1, 0, 0, 0, name, typeA)
	return numberedQuery{b: q, digits: 12 + 1 + len(prefix), width: width}
}

// set writes n (mod 10^width) and id into the query and returns it (the
// same slice each time).
func (q numberedQuery) set(n int, id uint16) []byte {
	binary.BigEndian.PutUint16(q.b, id)
	for i := q.width - 1; i >= 0; i-- {
		q.b[q.digits+i] = byte('0' + n%10)
		n /= 10
	}
	return q.b
}

// number parses the digits back out of a reply to such a query (-1 when
// b is not one).
func (q numberedQuery) number(b []byte) int {
	if len(b) < q.digits+q.width || !bytesEqual(b[12:q.digits], q.b[12:q.digits]) {
		return -1
	}
	n := 0
	for _, c := range b[q.digits : q.digits+q.width] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// pickCounters returns the named entries of c (for log lines).
func pickCounters(c map[string]uint64, keys ...string) map[string]uint64 {
	out := make(map[string]uint64, len(keys))
	for _, k := range keys {
		out[k] = c[k]
	}
	return out
}
