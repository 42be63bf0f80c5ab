// Command tapproxy is a transparent logging DNS proxy. main only parses
// flags, builds the pieces and maps failures to exit codes; the data path
// lives in listener/, upstream/, annotate/ and tap/.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.1.0-dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand; serving is the default.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "read":
			return runRead(ctx, args[1:], stdout, stderr)
		case "report":
			return runReport(ctx, args[1:], stdout, stderr)
		case "check-config":
			return runCheckConfig(args[1:], stdout, stderr)
		case "tune":
			return runTune(ctx, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "tapproxy", version)
			return 0
		case "serve":
			return runServe(ctx, args[1:], stdout, stderr)
		case "help":
			usage(stdout)
			return 0
		}
	}
	return runServe(ctx, args, stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `tapproxy: a transparent logging DNS proxy

Usage:
  tapproxy [serve] --listen ADDR:PORT --upstream ADDR:PORT [flags]   forward and log DNS
  tapproxy read [flags] FILE                                         print a dnstap file
  tapproxy report [--format text|json] [--html OUT] FILE             latency/traffic summary of a dnstap file
  tapproxy check-config [--print] [serve flags]                      validate the configuration, bind nothing
  tapproxy tune [flags]                                              check the system settings that drop packets
  tapproxy version

Run "tapproxy serve --help" or "tapproxy read --help" for the flags.
`)
}
