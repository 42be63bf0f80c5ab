package metrics

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults of Options.
const (
	DefaultInterval = time.Second
	DefaultHistory  = 300 // five minutes at one sample a second
)

// Options configure a Metrics endpoint. Zero values mean the defaults.
type Options struct {
	// Interval between samples of the live page's history.
	Interval time.Duration
	// History is the number of samples kept.
	History int
	Log     *slog.Logger
	// OnSample, when set, is called after each sample is stored with the
	// number of samples held (tests wait on it instead of sleeping).
	OnSample func(n int)
	// Pprof mounts Go's profiler (net/http/pprof) at /debug/pprof/. Off
	// by default: a CPU profile costs CPU while it runs and the endpoint
	// reveals internals, so an operator turns it on to chase a problem,
	// on a listener that only they can reach.
	Pprof bool
}

// Metrics is the diagnostics endpoint: registry, sampler and HTTP handler.
type Metrics struct {
	src    Sources
	opts   Options
	reg    *prometheus.Registry
	obsReg *prometheus.Registry // the Observer alone, for the sampler
	start  time.Time
	hist   history
}

// New builds the registry for src. It starts nothing: call Serve, or Run
// and Handler.
func New(src Sources, opts Options) (*Metrics, error) {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.History <= 0 {
		opts.History = DefaultHistory
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	reg, err := NewRegistry(src)
	if err != nil {
		return nil, err
	}
	m := &Metrics{src: src, opts: opts, reg: reg, start: time.Now()}
	m.hist.buf = make([]Sample, opts.History)
	if src.Observer != nil {
		m.obsReg = prometheus.NewRegistry()
		if err := m.obsReg.Register(src.Observer); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return m, nil
}

// Registry returns the registry behind /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

//go:embed page/index.html
var page embed.FS

// Handler serves /metrics (Prometheus text or protobuf), /status.json and
// the live page at /.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(m.opts.Log.Handler(), slog.LevelWarn), Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		if err := enc.Encode(m.Status()); err != nil {
			m.opts.Log.Debug("writing status.json", "err", err)
		}
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, err := page.ReadFile("page/index.html")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		// The page loads nothing from elsewhere; say so to the browser.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")
		_, _ = w.Write(b)
	})
	if m.opts.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Run samples every Interval until ctx is done. The first sample is taken
// at once (it is the baseline of the first interval).
func (m *Metrics) Run(ctx context.Context) {
	m.takeSample(time.Now())
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.takeSample(now)
		}
	}
}

// ErrAddr is wrapped by Listen's error for an address that is not
// IP:PORT.
var ErrAddr = errors.New("metrics: want IP:PORT")

// Listen binds the metrics address. It takes a literal IP and port only:
// the operator names the interface, and a name never resolves to something
// unexpected.
func Listen(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrAddr, addr, err)
	}
	ln, err := net.Listen("tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("metrics: listening on %s: %w", ap, err)
	}
	return ln, nil
}

// Serve runs the sampler and serves HTTP on ln until ctx is done, then
// shuts the server down (bounded by 2 s) and returns. ln is closed.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(m.opts.Log.Handler(), slog.LevelDebug),
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sampled := make(chan struct{})
	go func() { defer close(sampled); m.Run(sctx) }()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = srv.Shutdown(dctx)
		dcancel()
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && serr != nil {
			err = errors.Join(err, serr)
		}
	case err = <-errc:
		err = fmt.Errorf("metrics: serving on %s: %w", ln.Addr(), err)
	}
	cancel()
	<-sampled
	return err
}
