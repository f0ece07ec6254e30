package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/host/sink"
)

type runFlags struct {
	plugin      string
	output      string
	jobs        int
	compression string
	timeout     time.Duration
	logLevel    string
	progress    string
	fullErrors  bool
	sinks       multiFlag
	rt          runtimeFlags
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f runFlags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.plugin, "plugin", "", "plugin to run: a .py file, a go-plugin executable, a .wasm module, or a plugin manifest (.json) (required)")
	fs.StringVar(&f.output, "output", "output", "output directory")
	fs.IntVar(&f.jobs, "jobs", 4, "files processed in parallel")
	fs.StringVar(&f.compression, "compression", "snappy", "Parquet compression: snappy, zstd, gzip, none")
	fs.DurationVar(&f.timeout, "timeout", 0, "per-file job timeout (0 = none)")
	f.rt.register(fs)
	fs.StringVar(&f.logLevel, "log-level", "warn", "log level: debug, info, warn, error (plugin stdout is info, stderr warn)")
	fs.StringVar(&f.progress, "progress", "auto", "progress display: auto (bar on a terminal), bar, lines, none")
	fs.BoolVar(&f.fullErrors, "full-errors", false, "print failed jobs' errors whole (tracebacks are shortened otherwise)")
	fs.Var(&f.sinks, "sink", "route a topic: TOPIC=URI (parquet://PATH or sqlite:///abs/file.db/table); repeatable")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian run --plugin PLUGIN --output DIR [flags] INPUT...\n\nINPUT is a file, a directory (read recursively, hidden files skipped) or a glob.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.plugin == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "casparian run: --plugin and at least one INPUT are required")
		fs.Usage()
		return 2
	}
	if f.jobs < 1 {
		fmt.Fprintln(stderr, "casparian run: --jobs must be at least 1")
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		fmt.Fprintf(stderr, "casparian run: --log-level: %v\n", err)
		return 2
	}
	var sinks []host.SinkConfig
	for _, s := range f.sinks {
		topic, uri, ok := strings.Cut(s, "=")
		if !ok || topic == "" || uri == "" {
			fmt.Fprintf(stderr, "casparian run: --sink %q is not TOPIC=URI\n", s)
			return 2
		}
		sinks = append(sinks, host.SinkConfig{Topic: topic, URI: uri})
	}

	term := newTerminal(stderr, f.progress)
	logger := slog.New(term.handler(level))

	plugin, err := resolvePlugin(f.plugin)
	if err != nil {
		fmt.Fprintf(stderr, "casparian run: %v\n", err)
		return 2
	}
	inputs, warnings := expandInputs(fs.Args())
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if len(inputs) == 0 {
		fmt.Fprintln(stderr, "casparian run: no input files found")
		return 2
	}

	runtimes, closeRuntimes, err := f.rt.newRuntimes(ctx, []guest.Kind{plugin.Kind}, f.jobs, logger)
	if err != nil {
		fmt.Fprintf(stderr, "casparian run: %v\n", err)
		return 1
	}
	defer closeRuntimes()
	h, err := host.New(host.Config{Runtimes: runtimes, OutputDir: f.output, JobTimeout: f.timeout, Logger: logger,
		Sink: sink.Options{Compression: f.compression}})
	if err != nil {
		fmt.Fprintf(stderr, "casparian run: %v\n", err)
		return 1
	}
	if err := os.MkdirAll(f.output, 0o755); err != nil {
		fmt.Fprintf(stderr, "casparian run: output dir: %v\n", err)
		return 1
	}

	// Job ids number the inputs in order. There is no file-version registry in
	// `casparian run`, so file_version_id (event.file_id, _file_version_id) is 0.
	jobs := make([]host.Job, len(inputs))
	stems := fileStems(inputs)
	for i, in := range inputs {
		jobs[i] = host.Job{ID: int64(i + 1), InputPath: in, Plugin: plugin, Sinks: sinks, FileStem: stems[i]}
	}

	start := time.Now()
	receipts := make([]host.Receipt, len(jobs))
	work := make(chan int)
	var wg sync.WaitGroup
	term.start(len(jobs))
	for w := 0; w < min(f.jobs, len(jobs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				receipts[i] = h.Run(ctx, jobs[i])
				term.done(jobs[i], receipts[i])
			}
		}()
	}
feed:
	for i := range jobs {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	term.stop()

	return printSummary(stdout, plugin, f.output, jobs, receipts, time.Since(start), ctx.Err() != nil, f.fullErrors)
}

// resolvePlugin reads a --plugin argument: a manifest, or an artifact
// whose guest kind is detected from the file.
func resolvePlugin(path string) (guest.Plugin, error) {
	m, err := manifest.Resolve(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return guest.Plugin{}, fmt.Errorf("plugin %s: %w", path, pe.Err)
		}
		return guest.Plugin{}, fmt.Errorf("plugin %s: %w", path, err)
	}
	return m.Plugin(), nil
}

func pythonInterpreter(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("CASPARIAN_PYTHON"); v != "" {
		return v
	}
	if _, err := os.Stat(".venv/bin/python"); err == nil {
		abs, _ := filepath.Abs(".venv/bin/python")
		return abs
	}
	return "python3"
}

// expandInputs turns files, directories and globs into a sorted, de-duplicated
// list of absolute paths (job ids follow that order). A path that does not exist is kept: its job fails with a
// clear INPUT error, and the other files still run.
func expandInputs(args []string) (files []string, warnings []string) {
	seen := map[string]bool{}
	add := func(p string) {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
	}
	for _, a := range args {
		if strings.ContainsAny(a, "*?[") {
			if _, err := os.Stat(a); err != nil { // a literal name with brackets still works
				matches, err := filepath.Glob(a)
				if err != nil {
					warnings = append(warnings, fmt.Sprintf("bad glob %q: %v", a, err))
					continue
				}
				if len(matches) == 0 {
					warnings = append(warnings, fmt.Sprintf("glob %q matched no file", a))
				}
				for _, m := range matches {
					if st, err := os.Stat(m); err == nil && st.IsDir() {
						warnings = walkDir(m, add, warnings)
					} else {
						add(m)
					}
				}
				continue
			}
		}
		st, err := os.Stat(a)
		if err == nil && st.IsDir() {
			warnings = walkDir(a, add, warnings)
			continue
		}
		add(a)
	}
	sort.Strings(files)
	return files, warnings
}

func walkDir(root string, add func(string), warnings []string) []string {
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("skipping %s: %v", p, err))
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if p != root && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			add(p)
		}
		return nil
	})
	return warnings
}

var unsafeStem = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// fileStems names each input's output file: its sanitized base name plus the
// job id, so two inputs with the same name never collide.
func fileStems(inputs []string) []string {
	out := make([]string, len(inputs))
	for i, in := range inputs {
		base := strings.TrimSuffix(filepath.Base(in), filepath.Ext(in))
		base = strings.Trim(unsafeStem.ReplaceAllString(base, "_"), "._-")
		if base == "" {
			base = "input"
		}
		if len(base) > 80 {
			base = base[:80]
		}
		out[i] = fmt.Sprintf("%s_%d", base, i+1)
	}
	return out
}
