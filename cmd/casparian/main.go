// Command casparian is the one CLI of Casparian Flow.
//
//	casparian run --plugin PLUGIN --output DIR [--jobs N] INPUT...
//	casparian start | sentinel | worker     the daemons
//	casparian enqueue | jobs | workers      operator commands on the queue
//	casparian source | ignore | route | subscribe | scan | files   files to jobs
//	casparian keys | publish               signed publishing
//	casparian conformance --guest KIND      certify a guest kind
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

  casparian start [--addr tcp://127.0.0.1:5555] [--database sqlite://casparian_flow.db] [--output DIR]
      Run a sentinel and one worker in one process.
  casparian sentinel [--bind tcp://0.0.0.0:5555] [--database sqlite://casparian_flow.db]
      Run the control plane: the SQLite job queue, dispatching over ZeroMQ.
  casparian worker --connect tcp://HOST:5555 --output DIR
      Run jobs the sentinel dispatches (4 at once by default).
  casparian enqueue --plugin NAME [--plugin-file PLUGIN.py] FILE...
      Add jobs to the queue (registering the files and the plugin).
  casparian jobs [--file PATH] | casparian workers | casparian plugins
      Print the job queue, the workers the sentinel knows, or the plugins.
  casparian requeue JOB_ID... | casparian requeue --all-failed [--plugin NAME]
      Run FAILED jobs again.
  casparian source add PATH... | casparian source list | casparian ignore PATTERN...
      Watch directory trees (gitignore-style exclusions).
  casparian route add GLOB TAG | casparian route list | casparian subscribe PLUGIN TAG...
      Tag files by path; run a plugin on every new file version with one of its tags.
  casparian scan | casparian files
      Scan the source roots now (the sentinel does it every --scan-interval); list the files.
  casparian keys generate | casparian keys trust --name NAME KEY | casparian keys list
      Publisher keys (Ed25519): make yours; allow one on the sentinel's database.
  casparian publish [--connect tcp://HOST:5555] [--pattern GLOB] [--dry-run] PLUGIN
      Sign and deploy a plugin (.py, go-plugin executable, .wasm or manifest) to the sentinel.
  casparian conformance --guest python|goplugin|wasm|all [--only CASE,...]
      Certify a guest kind: run the conformance suite against its reference
      plugin; print a table and write conformance-KIND.json. --list shows the cases.
  casparian version
      Print the version.

Every command takes -h. Logs: --log-level or $CASPARIAN_LOG; --log-format text|json.
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
	case "start":
		return cmdStart(ctx, args[1:], os.Stdout, os.Stderr)
	case "sentinel":
		return cmdSentinel(ctx, args[1:], os.Stdout, os.Stderr)
	case "worker":
		return cmdWorker(ctx, args[1:], os.Stdout, os.Stderr)
	case "enqueue":
		return cmdEnqueue(ctx, args[1:], os.Stdout, os.Stderr)
	case "jobs":
		return cmdJobs(ctx, args[1:], os.Stdout, os.Stderr)
	case "workers":
		return cmdWorkers(ctx, args[1:], os.Stdout, os.Stderr)
	case "conformance":
		return cmdConformance(ctx, args[1:], os.Stdout, os.Stderr)
	case "source":
		return cmdSource(ctx, args[1:], os.Stdout, os.Stderr)
	case "ignore":
		return cmdIgnore(ctx, args[1:], os.Stdout, os.Stderr)
	case "route":
		return cmdRoute(ctx, args[1:], os.Stdout, os.Stderr)
	case "subscribe":
		return cmdSubscribe(ctx, args[1:], os.Stdout, os.Stderr)
	case "scan":
		return cmdScan(ctx, args[1:], os.Stdout, os.Stderr)
	case "files":
		return cmdFiles(ctx, args[1:], os.Stdout, os.Stderr)
	case "plugins":
		return cmdPlugins(ctx, args[1:], os.Stdout, os.Stderr)
	case "requeue":
		return cmdRequeue(ctx, args[1:], os.Stdout, os.Stderr)
	case "keys":
		return cmdKeys(ctx, args[1:], os.Stdout, os.Stderr)
	case "publish":
		return cmdPublish(ctx, args[1:], os.Stdout, os.Stderr)
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
