//go:build !tapproxy_small

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tapproxy/tapproxy/tap/reader"
	"github.com/tapproxy/tapproxy/tap/report"
)

const reportUsage = `usage:
  tapproxy report [--format text|json] [--html OUT.html] [--top N] [--bucket DURATION] FILE

Summarises a dnstap Frame Streams file written by tapproxy or any other
producer (Unbound, BIND, dnsdist, kdig; FILE "-" reads stdin): queries per
second over time, latency percentiles (p50, p90, p99, p99.9, max) overall,
per upstream and per query type, the client queue / inside tapproxy /
upstream breakdown of tapproxy records, the rcode mix, the top query names
and clients, unanswered queries, responses without a query, and the share
of answers within 1, 10 and 100 ms. --html also writes a self-contained HTML
report with plots (latency histogram, latency over time, queries per second,
breakdown).

flags:
`

// runReport implements "tapproxy report". Exit codes are those of
// "tapproxy read"; with 4 and 5 the report of the messages before the
// damage is still written.
func runReport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	_ = ctx // the report reads one file to its end; nothing to cancel
	fs := flag.NewFlagSet("tapproxy report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("format", "text", "output format: text or json")
	htmlOut := fs.String("html", "", "also write a self-contained HTML report with plots to `FILE`")
	top := fs.Int("top", 10, "query names and clients listed")
	bucket := fs.Duration("bucket", 0, "width of the time series buckets (0: 1s, or wider to keep at most 300)")
	fs.Usage = func() {
		fmt.Fprint(stderr, reportUsage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nexit codes:\n"+reader.ExitCodesText())
	}
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return reader.ExitOK
			}
			return reader.ExitUsage
		}
		if args = fs.Args(); len(args) == 0 {
			break
		}
		files, args = append(files, args[0]), args[1:]
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "tapproxy report: %s (see tapproxy report --help)\n", msg)
		return reader.ExitUsage
	}
	switch {
	case len(files) != 1:
		return usage("want exactly one FILE")
	case *format != "text" && *format != "json":
		return usage(fmt.Sprintf("--format %q: want text or json", *format))
	case *top <= 0:
		return usage("--top must be positive")
	case *bucket < 0:
		return usage("--bucket must not be negative")
	}
	in := io.Reader(os.Stdin)
	name := files[0]
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(stderr, "tapproxy report: %v\n", err)
			return reader.ExitIO
		}
		defer f.Close()
		in = f
	}
	rep, err := report.Read(in, report.Options{Top: *top, Bucket: *bucket})
	code := reader.ExitCode(err)
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy report: %s: %v\n", name, err)
	}
	if code != reader.ExitOK && code != reader.ExitTruncated && code != reader.ExitBadFrame {
		return code // nothing worth summarising
	}
	rep.File = name
	if *format == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy report: writing the report: %v\n", err)
		return reader.ExitIO
	}
	if *htmlOut != "" {
		if err := writeHTMLReport(*htmlOut, rep); err != nil {
			fmt.Fprintf(stderr, "tapproxy report: %v\n", err)
			return reader.ExitIO
		}
	}
	return code
}

func writeHTMLReport(path string, rep *report.Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := rep.WriteHTML(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}
