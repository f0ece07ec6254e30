// Command casparian is the one CLI of Casparian Flow.
//
//	casparian run --plugin PLUGIN --output DIR [--jobs N] INPUT...
//	casparian version
//
// main is the only place that wires guest runtimes to the host.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/casparianflow/casparian/host"
)

const usage = `casparian — turn files into Parquet with plugins

Usage:
  casparian run --plugin PLUGIN --output DIR [flags] INPUT...
      Run a plugin over files, directories or globs, in parallel, and write
      one Parquet file per (input, topic). Run "casparian run -h" for flags.
  casparian version
      Print the version.
`

func main() {
	os.Exit(realMain(os.Args[1:]))
}

func realMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], os.Stdout, os.Stderr)
	case "version", "--version", "-v":
		fmt.Println("casparian", host.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "casparian: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
