package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tapproxy/tapproxy/tuning"
)

// tuneList is a repeatable flag that also takes comma lists.
type tuneList []string

func (l *tuneList) String() string { return strings.Join(*l, ",") }
func (l *tuneList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

const tuneUsage = `Usage: tapproxy tune [flags]

Checks the kernel settings, counters and privileges that decide whether
tapproxy loses packets, and prints each finding with the sysctl or flag that
fixes it. It changes nothing. Give it the same --listen, --workers, --rcvbuf
and --sndbuf as tapproxy, and --pid of a running tapproxy to see its own
socket drops.

Exit status: 0 all OK (or skipped), 1 warnings, 2 failures, 64 usage error.

Flags:
`

// runTune is `tapproxy tune`: flags in, tuning.Run, report out, exit code
// from the worst finding. ctx is unused: the checks are a few file reads.
func runTune(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var (
		listen tuneList
		o      tuning.Options
		format string
		probe  bool
	)
	fs := flag.NewFlagSet("tapproxy tune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), tuneUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.Root, "root", "/", "where /proc and /sys are found (a copy taken from another machine works too)")
	fs.Var(&listen, "listen", "tapproxy's `ADDR:PORT` (repeatable; :PORT or PORT also do; default :53)")
	fs.IntVar(&o.PID, "pid", 0, "`PID` of a running tapproxy: check only its sockets, its network namespace and its capabilities")
	fs.IntVar(&o.Workers, "workers", 0, "tapproxy's --workers `N` (0: its default, one per CPU)")
	fs.IntVar(&o.RcvBuf, "rcvbuf", tuning.DefaultBuffer, "receive buffer `BYTES` tapproxy will ask for")
	fs.IntVar(&o.SndBuf, "sndbuf", tuning.DefaultBuffer, "send buffer `BYTES` tapproxy will ask for")
	fs.StringVar(&format, "format", "text", "output: text or json")
	fs.BoolVar(&probe, "probe", true, "probe SO_REUSEPORT, SO_TIMESTAMPNS and SO_RXQ_OVFL on this kernel (turn off when --root is another machine's copy)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return tuning.ExitOK
		}
		return tuning.ExitUsage
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tapproxy tune: "+format+"\n", a...)
		return tuning.ExitUsage
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if format != "text" && format != "json" {
		return usageErr("--format %q: want text or json", format)
	}
	if o.PID < 0 || o.Workers < 0 || o.RcvBuf <= 0 || o.SndBuf <= 0 {
		return usageErr("--pid and --workers must not be negative, --rcvbuf and --sndbuf must be positive")
	}
	if len(listen) == 0 {
		listen = tuneList{":53"}
	}
	for _, l := range listen {
		p, err := tuning.ParsePort(l)
		if err != nil {
			return usageErr("--listen %v", err)
		}
		o.Ports = append(o.Ports, p)
	}
	if probe {
		o.Prober = tuning.LiveProber{}
	}

	rep := tuning.Run(o)
	var err error
	if format == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tapproxy tune: writing the report: %v\n", err)
		return tuning.ExitFail
	}
	return rep.ExitCode()
}
