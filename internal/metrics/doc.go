// Package metrics owns tapproxy's diagnostics endpoint (serve --metrics
// ADDR:PORT): the Prometheus registry and /metrics, a JSON status document
// (/status.json) with a short history sampled every second, and a small
// self-contained live page (/) that plots it.
//
// It reads numbers that other packages already keep; it never counts
// anything itself. The fate counters are read from server.Counters on each
// scrape (one collector, so the exported values are exactly the ones in the
// "final counters" log line), the per-upstream figures from upstream.Pool,
// the dnstap figures from tap.Logger's Stats, the latency histograms from
// annotate.Observer. The metric names are listed in README.md in this
// directory, and a test keeps that list and the registry in step.
//
// It must never be on the DNS path: nothing here is called by a forwarding
// worker, scrapes and the sampler only load atomics, and a slow or stuck
// HTTP client costs one goroutine of the HTTP server, bounded by timeouts.
// It must never listen anywhere the operator did not name, and it serves no
// external assets (the page is embedded with go:embed and draws on a canvas
// in plain JavaScript).
package metrics
