package upstream

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Policy chooses among healthy upstreams.
type Policy uint8

const (
	// FirstAvailable sends to the first healthy upstream in the order
	// given (the default: a primary with standbys).
	FirstAvailable Policy = iota
	// RoundRobin rotates through healthy upstreams, weighted.
	RoundRobin
	// LeastOutstanding picks the healthy upstream with the fewest queries
	// in flight relative to its weight.
	LeastOutstanding
	// ConsistentHash maps each query name to one healthy upstream, so
	// each server's cache sees a stable share of the names (rendezvous
	// hashing: when an upstream goes down only its names move).
	ConsistentHash
)

var policyNames = [...]string{"first-available", "round-robin", "least-outstanding", "consistent-hash"}

func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return "unknown"
}

// ParsePolicy parses a policy name.
func ParsePolicy(s string) (Policy, error) {
	for i, n := range policyNames {
		if s == n {
			return Policy(i), nil
		}
	}
	return 0, fmt.Errorf("policy %q: want one of %s", s, strings.Join(policyNames[:], ", "))
}

// AllDownAction is what happens to a query when no upstream is healthy.
type AllDownAction uint8

const (
	// AllDownLeastBad keeps sending to the upstream that failed least
	// recently by policy order (the default: a wrong health verdict must
	// not turn into an outage).
	AllDownLeastBad AllDownAction = iota
	// AllDownServfail answers SERVFAIL at once, without forwarding.
	AllDownServfail
)

// ParseAllDown parses "least-bad" or "servfail".
func ParseAllDown(s string) (AllDownAction, error) {
	switch s {
	case "least-bad":
		return AllDownLeastBad, nil
	case "servfail":
		return AllDownServfail, nil
	}
	return 0, fmt.Errorf("all-down action %q: want least-bad or servfail", s)
}

// Spec describes one upstream as configured.
type Spec struct {
	Addr   netip.AddrPort
	Weight int // ≥ 1
	// ProxyV2 prepends a PROXY protocol v2 header carrying the client's
	// address to every query sent to this upstream.
	ProxyV2 bool
}

// ParseSpec parses "ADDR:PORT" optionally followed by ";weight=N" and
// ";proxy-v2", e.g. "127.0.0.1:5353;weight=2;proxy-v2".
func ParseSpec(s string) (Spec, error) {
	parts := strings.Split(s, ";")
	ap, err := netip.ParseAddrPort(strings.TrimSpace(parts[0]))
	if err != nil {
		return Spec{}, fmt.Errorf("upstream %q: want IP:PORT or [IPv6]:PORT: %w", s, err)
	}
	sp := Spec{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Weight: 1}
	for _, opt := range parts[1:] {
		opt = strings.TrimSpace(opt)
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "weight":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				return Spec{}, fmt.Errorf("upstream %q: weight %q: want 1..1000", s, v)
			}
			sp.Weight = n
		case "proxy-v2":
			sp.ProxyV2 = true
		default:
			return Spec{}, fmt.Errorf("upstream %q: unknown option %q (want weight=N or proxy-v2)", s, opt)
		}
	}
	if sp.Addr.Port() == 0 {
		return Spec{}, fmt.Errorf("upstream %q: port 0", s)
	}
	return sp, nil
}

// SpecsFrom turns plain addresses into specs of weight 1, in order.
func SpecsFrom(addrs []netip.AddrPort) []Spec {
	specs := make([]Spec, len(addrs))
	for i, a := range addrs {
		specs[i] = Spec{Addr: a, Weight: 1}
	}
	return specs
}

// HealthConfig tunes health checking.
type HealthConfig struct {
	// FailThreshold consecutive failures (timeouts, refused sends, ICMP
	// unreachable) mark an upstream down.
	FailThreshold int
	// RiseThreshold consecutive good probes bring it back.
	RiseThreshold int
	// ProbeInterval between active probes of a down upstream (and of every
	// upstream when ProbeAlways).
	ProbeInterval time.Duration
	ProbeAlways   bool
	// ProbeName and ProbeType are the probe question (default ". NS").
	ProbeName string
	ProbeType uint16
	AllDown   AllDownAction
}

// Health defaults.
const (
	DefaultFailThreshold = 3
	DefaultRiseThreshold = 2
	DefaultProbeInterval = time.Second
)

// Upstream is one server's shared state: health and figures, read and
// updated by every worker without a lock on the query path.
type Upstream struct {
	Spec
	index int

	up          atomic.Bool
	consecFails atomic.Int32
	goodProbes  atomic.Int32
	lastFail    atomic.Int64 // unix ns

	InFlight    atomic.Int64
	Queries     atomic.Uint64
	Timeouts    atomic.Uint64
	Errors      atomic.Uint64 // fast failures: refused sends, ICMP unreachable
	Transitions atomic.Uint64 // up↔down changes
	rttEWMA     atomic.Int64  // ns, α = 1/8 (RFC 6298 §2 style smoothing)
}

// Up reports whether the upstream is considered healthy.
func (u *Upstream) Up() bool { return u.up.Load() }

// RTT returns the smoothed round-trip time.
func (u *Upstream) RTT() time.Duration { return time.Duration(u.rttEWMA.Load()) }

// Index is the upstream's position in the configured order.
func (u *Upstream) Index() int { return u.index }

// Pool holds the upstreams, the policy and the health state machine. It is
// shared by every worker.
type Pool struct {
	ups    []*Upstream
	policy Policy
	hc     HealthConfig
	log    *slog.Logger
	seed   maphash.Seed
	rr     atomic.Uint64
	// wrr is the weighted round-robin schedule: upstream indices, each
	// repeated by weight, interleaved.
	wrr []int
	mu  sync.Mutex // serialises state-change logging
}

// ErrAllDown is returned by Pick when every upstream is down and the
// all-down action is servfail.
var ErrAllDown = errors.New("upstream: every upstream is down")

// NewPool builds a pool; every upstream starts healthy.
func NewPool(specs []Spec, policy Policy, hc HealthConfig, log *slog.Logger) (*Pool, error) {
	if len(specs) == 0 {
		return nil, errors.New("upstream: no upstream configured")
	}
	if hc.FailThreshold <= 0 {
		hc.FailThreshold = DefaultFailThreshold
	}
	if hc.RiseThreshold <= 0 {
		hc.RiseThreshold = DefaultRiseThreshold
	}
	if hc.ProbeInterval <= 0 {
		hc.ProbeInterval = DefaultProbeInterval
	}
	if hc.ProbeName == "" {
		hc.ProbeName = "."
	}
	if hc.ProbeType == 0 {
		hc.ProbeType = 2 // NS
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{policy: policy, hc: hc, log: log, seed: maphash.MakeSeed()}
	maxW := 0
	for i, s := range specs {
		if s.Weight <= 0 {
			s.Weight = 1
		}
		u := &Upstream{Spec: s, index: i}
		u.up.Store(true)
		p.ups = append(p.ups, u)
		maxW = max(maxW, s.Weight)
	}
	// Interleaved weighted schedule: round r includes every upstream
	// whose weight exceeds r.
	for r := 0; r < maxW; r++ {
		for i, u := range p.ups {
			if u.Weight > r {
				p.wrr = append(p.wrr, i)
			}
		}
	}
	return p, nil
}

// Upstreams returns the pool's upstreams in configured order.
func (p *Pool) Upstreams() []*Upstream { return p.ups }

// Health returns the health configuration in force.
func (p *Pool) Health() HealthConfig { return p.hc }

// Pick chooses an upstream for a query named qname (lower-cased wire form;
// may be nil for malformed queries). It never allocates.
func (p *Pool) Pick(qname []byte) (*Upstream, error) { return p.pick(qname, nil) }

// PickExcept is Pick with one upstream excluded (the one that just failed).
// It returns ErrAllDown when no other upstream is healthy.
func (p *Pool) PickExcept(qname []byte, except *Upstream) (*Upstream, error) {
	u, err := p.pick(qname, except)
	if err == nil && u == except {
		return nil, ErrAllDown
	}
	return u, err
}

func (p *Pool) ok(u, except *Upstream) bool { return u != except && u.up.Load() }

func (p *Pool) pick(qname []byte, except *Upstream) (*Upstream, error) {
	if len(p.ups) == 1 && except == nil {
		u := p.ups[0]
		if !u.up.Load() && p.hc.AllDown == AllDownServfail {
			return nil, ErrAllDown
		}
		return u, nil
	}
	var best *Upstream
	switch p.policy {
	case FirstAvailable:
		for _, u := range p.ups {
			if p.ok(u, except) {
				return u, nil
			}
		}
	case RoundRobin:
		n := uint64(len(p.wrr))
		start := p.rr.Add(1)
		for k := uint64(0); k < n; k++ {
			u := p.ups[p.wrr[(start+k)%n]]
			if p.ok(u, except) {
				return u, nil
			}
		}
	case LeastOutstanding:
		var bestLoad int64
		for _, u := range p.ups {
			if !p.ok(u, except) {
				continue
			}
			// Compare inFlight/weight without division.
			load := u.InFlight.Load() * 1000 / int64(u.Weight)
			if best == nil || load < bestLoad {
				best, bestLoad = u, load
			}
		}
		if best != nil {
			return best, nil
		}
	case ConsistentHash:
		// Rendezvous (highest random weight) hashing over healthy
		// upstreams; weight scales the score.
		var bestScore uint64
		for _, u := range p.ups {
			if !p.ok(u, except) {
				continue
			}
			var h maphash.Hash
			h.SetSeed(p.seed)
			_, _ = h.Write(qname)
			_ = h.WriteByte(byte(u.index))
			score := (h.Sum64() >> 10) * uint64(u.Weight)
			if best == nil || score > bestScore {
				best, bestScore = u, score
			}
		}
		if best != nil {
			return best, nil
		}
	}
	if p.hc.AllDown == AllDownServfail || except != nil {
		return nil, ErrAllDown
	}
	// Every upstream is down: the one whose last failure is oldest.
	for _, u := range p.ups {
		if best == nil || u.lastFail.Load() < best.lastFail.Load() {
			best = u
		}
	}
	return best, nil
}

// Success records an acceptable answer (passive health) with its RTT.
func (p *Pool) Success(u *Upstream, rtt time.Duration) {
	u.consecFails.Store(0)
	if rtt > 0 {
		old := u.rttEWMA.Load()
		if old == 0 {
			u.rttEWMA.Store(int64(rtt))
		} else {
			u.rttEWMA.Store(old + (int64(rtt)-old)/8)
		}
	}
}

// Failure records a timeout (timeout true) or a fast error; after
// FailThreshold consecutive failures the upstream goes down.
func (p *Pool) Failure(u *Upstream, timeout bool) {
	if timeout {
		u.Timeouts.Add(1)
	} else {
		u.Errors.Add(1)
	}
	u.lastFail.Store(time.Now().UnixNano())
	if n := u.consecFails.Add(1); int(n) >= p.hc.FailThreshold && u.up.Load() {
		p.setUp(u, false, fmt.Sprintf("%d consecutive failures", n))
	}
}

// ProbeResult records an active probe's outcome; after RiseThreshold good
// probes in a row a down upstream comes back.
func (p *Pool) ProbeResult(u *Upstream, good bool) {
	if !good {
		u.goodProbes.Store(0)
		if u.up.Load() && p.hc.ProbeAlways {
			p.Failure(u, true)
		}
		return
	}
	u.consecFails.Store(0)
	if n := u.goodProbes.Add(1); int(n) >= p.hc.RiseThreshold && !u.up.Load() {
		p.setUp(u, true, fmt.Sprintf("%d good probes", n))
	}
}

// setUp changes state once, logging and counting the transition.
func (p *Pool) setUp(u *Upstream, up bool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if u.up.Load() == up {
		return
	}
	u.up.Store(up)
	u.goodProbes.Store(0)
	u.Transitions.Add(1)
	state := "down"
	if up {
		state = "up"
	}
	p.log.Warn("upstream state changed", "upstream", u.Addr, "state", state, "reason", why)
}
