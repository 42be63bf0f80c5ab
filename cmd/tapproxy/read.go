package main

import (
	"context"
	"errors"
	"flag"
	"io"

	"github.com/tapproxy/tapproxy/tap/reader"
)

// runRead is "tapproxy read": it parses the flags and hands over to package
// reader, which documents the exit codes (reader.ExitCodesText, also in
// --help). The collector mode (--unix, --tcp) runs until ctx is done: main
// cancels it on SIGINT or SIGTERM.
func runRead(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := reader.ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return reader.ExitOK
	}
	if err != nil {
		return reader.ExitUsage
	}
	return reader.Run(ctx, opts, stdout, stderr)
}
