package main

// casparian conformance: certify a guest kind outside `go test`.
//
//	casparian conformance --guest python|goplugin|wasm|all [--plugin PATH] [--python PATH]
//	                      [--report FILE] [--only SUBSTR[,SUBSTR]] [--big-mb N]
//	casparian conformance --list [--only SUBSTR]
//
// The suite (package conformance) runs its cases against the kind's
// reference plugin (package conformance/kinds). The go-plugin and WASM
// reference plugins come from --plugin, else from bin/conformance/ next to
// the executable (make build puts them there), else they are built with
// `go build` when the current directory is the source tree.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/conformance/kinds"
	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host/guest"
)

// modulePath is the module whose source tree can build the reference plugins.
const modulePath = "github.com/casparianflow/casparian"

// conformanceMessageWidth bounds the MESSAGE column (the report has it whole).
const conformanceMessageWidth = 100

func cmdConformance(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	guestFlag := fs.String("guest", "", "guest kind to certify: python, goplugin, wasm, or all (the three in turn) (required)")
	plugin := fs.String("plugin", "", "reference plugin to use, built from ./conformance/refplugin: a go-plugin executable (--guest goplugin)\n"+
		"or a .wasm module (--guest wasm) (default: conformance/refplugin[.wasm] next to the casparian executable,\n"+
		"else built with go build when the current directory is the source tree)")
	pyFlag := fs.String("python", "", "Python interpreter of the Python guest (default: $CASPARIAN_PYTHON, ./.venv/bin/python, python3)")
	reportFlag := fs.String("report", "", "write the JSON report to FILE (default: conformance-KIND.json); with --guest all,\n"+
		"one report per kind, named FILE with -KIND inserted before its extension")
	var onlyFlag multiFlag
	fs.Var(&onlyFlag, "only", "run only the cases whose names contain SUBSTR; repeatable or comma-separated")
	bigMB := fs.Int("big-mb", 256, "size in MB of the batch of case stream/big_batch")
	list := fs.Bool("list", false, "print the cases and what each demands, and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian conformance --guest python|goplugin|wasm|all [flags]\n"+
			"       casparian conformance --list\n\n"+
			"Certify a guest kind: run the conformance suite against its reference plugin, print\n"+
			"one line per case and write a JSON report with the full messages. Exit status: 0 when\n"+
			"every case passed, 1 when one failed, 2 when the suite could not start.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "casparian conformance: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "casparian conformance: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	only := splitList(onlyFlag)
	cases := selectCases(conformance.Cases(), only)
	if len(only) > 0 && len(cases) == 0 {
		return usageErr("--only %s matches no case; casparian conformance --list shows them", strings.Join(only, ","))
	}
	if *list {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CASE\tDEMANDS")
		for _, c := range cases {
			fmt.Fprintf(tw, "%s\t%s\n", c.Name, c.Doc)
		}
		tw.Flush()
		return 0
	}

	var todo []guest.Kind
	switch k := guest.Kind(strings.ToLower(strings.TrimSpace(*guestFlag))); {
	case k == "":
		fmt.Fprintln(stderr, "casparian conformance: --guest is required (python, goplugin, wasm or all)")
		fs.Usage()
		return 2
	case k == "all":
		todo = kinds.Kinds
	case slices.Contains(kinds.Kinds, k):
		todo = []guest.Kind{k}
	default:
		return usageErr("unknown guest kind %q: want python, goplugin, wasm or all", *guestFlag)
	}
	if *bigMB < 1 {
		return usageErr("--big-mb %d: want 1 or more", *bigMB)
	}
	if *plugin != "" {
		if len(todo) > 1 {
			return usageErr("--plugin names one reference plugin: use it with --guest goplugin or --guest wasm, not all")
		}
		if todo[0] == guest.KindPython {
			return usageErr("--plugin applies to --guest goplugin and wasm: the Python reference plugin is built in")
		}
	}
	reports := map[guest.Kind]string{}
	for _, k := range todo {
		reports[k] = reportPath(*reportFlag, k, len(todo) > 1)
		if dir := filepath.Dir(reports[k]); dir != "." {
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return usageErr("--report %s: directory %s does not exist", *reportFlag, dir)
			}
		}
	}

	work, err := os.MkdirTemp("", "casparian-conformance-")
	if err != nil {
		fmt.Fprintf(stderr, "casparian conformance: %v\n", err)
		return 2
	}
	defer os.RemoveAll(work)

	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "casparian conformance: %v\n", err)
		return 2
	}
	rc := 0
	var passed, failed int
	for i, k := range todo {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		cfg := kinds.Config{Python: pythonInterpreter(*pyFlag), WorkDir: filepath.Join(work, string(k))}
		var from string
		if k == guest.KindPython {
			versions, err := preflightPython(ctx, cfg.Python)
			if err != nil {
				fmt.Fprintf(stderr, "casparian conformance: %s: %v\n", k, err)
				rc = 2
				continue
			}
			from = versions
		} else {
			cfg.Plugin, cfg.SourceDir, err = locateRefPlugin(k, *plugin, executableDir(), cwd)
			if err != nil {
				fmt.Fprintf(stderr, "casparian conformance: %s: %v\n", k, err)
				rc = 2
				continue
			}
			if cfg.Plugin != "" {
				from = "reference plugin " + cfg.Plugin
			} else {
				from = "reference plugin built from " + cfg.SourceDir + " (go build)"
			}
		}
		fmt.Fprintf(stdout, "%s: %s; %d of %d cases\n", k, from, len(cases), len(conformance.Cases()))
		h, err := kinds.For(k, cfg)
		if err != nil {
			fmt.Fprintf(stderr, "casparian conformance: %v\n", err)
			rc = 2
			continue
		}
		start := time.Now()
		rep, err := conformance.Run(ctx, h, conformance.Options{BigBatchMB: *bigMB, Only: only})
		if err != nil {
			fmt.Fprintf(stderr, "casparian conformance: %s: the suite cannot start: %v\n%s\n", k, err, startHint(k, cfg))
			rc = 2
			continue
		}
		elapsed := time.Since(start)
		fmt.Fprintln(stdout)
		printConformanceTable(stdout, rep)
		n := rep.Failed()
		passed += len(rep.Results) - n
		failed += n
		if n > 0 && rc == 0 {
			rc = 1
		}
		reportNote := reports[k]
		if err := writeReport(reports[k], rep); err != nil {
			fmt.Fprintf(stderr, "casparian conformance: %s: write the report: %v\n", k, err)
			reportNote = "not written"
			if rc == 0 {
				rc = 1
			}
		}
		fmt.Fprintf(stdout, "\n%s: %d passed, %d failed in %s; report: %s\n", k, len(rep.Results)-n, n, roundElapsed(elapsed), reportNote)
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "casparian conformance: interrupted")
			if rc == 0 {
				rc = 1
			}
			break
		}
	}
	if len(todo) > 1 {
		fmt.Fprintf(stdout, "\nall: %d passed, %d failed\n", passed, failed)
	}
	return rc
}

// splitList splits repeated, comma-separated values, dropping empty ones.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// selectCases keeps the cases whose names contain one of only (all when
// only is empty), as conformance.Options.Only does.
func selectCases(cs []conformance.Case, only []string) []conformance.Case {
	if len(only) == 0 {
		return cs
	}
	var out []conformance.Case
	for _, c := range cs {
		if slices.ContainsFunc(only, func(s string) bool { return strings.Contains(c.Name, s) }) {
			out = append(out, c)
		}
	}
	return out
}

// reportPath is where kind's report goes: flagValue, else
// conformance-KIND.json; with several kinds, flagValue gets -KIND before its
// extension.
func reportPath(flagValue string, kind guest.Kind, several bool) string {
	if flagValue == "" {
		return "conformance-" + string(kind) + ".json"
	}
	if !several {
		return flagValue
	}
	ext := filepath.Ext(flagValue)
	return strings.TrimSuffix(flagValue, ext) + "-" + string(kind) + ext
}

func writeReport(path string, rep conformance.Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func printConformanceTable(w io.Writer, rep conformance.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tRESULT\tDURATION\tMESSAGE")
	for _, r := range rep.Results {
		result := "PASS"
		if !r.Passed {
			result = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", tableCell(r.Case, 60), result, r.Duration.Round(time.Millisecond),
			orDash(tableCell(firstLineOf(r.Message), conformanceMessageWidth)))
	}
	tw.Flush()
}

// roundElapsed renders a suite's run time: 25.3s, or 412ms under a second.
func roundElapsed(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// preflightPython checks that py runs plugins (Python 3.10+ with pyarrow)
// and returns its versions and path.
func preflightPython(ctx context.Context, py string) (string, error) {
	rt, err := python.New(python.Config{Python: py})
	if err != nil {
		return "", err
	}
	defer rt.Close(context.Background())
	v, err := rt.Preflight(ctx)
	if err != nil {
		return "", err
	}
	return v + " (" + rt.Interpreter() + ")", nil
}

// startHint says what to do when the suite of kind cannot start.
func startHint(kind guest.Kind, cfg kinds.Config) string {
	switch {
	case kind == guest.KindPython:
		return "Check that --python (or $CASPARIAN_PYTHON) is Python 3.10+ with pyarrow; `make venv` creates one in .venv."
	case cfg.Plugin != "":
		return "Check that " + cfg.Plugin + " is the reference plugin built from ./conformance/refplugin for " + string(kind) +
			" (make build puts it in bin/conformance/), or pass another with --plugin."
	default:
		return "Run `make build` (it puts the reference plugins in bin/conformance/) or pass --plugin PATH."
	}
}

// executableDir is the directory of the running executable, symlinks
// resolved ("" when unknown).
func executableDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if p, err := filepath.EvalSymlinks(exe); err == nil {
		exe = p
	}
	return filepath.Dir(exe)
}

// defaultRefPlugin is where make build puts kind's reference plugin,
// relative to bin/casparian.
func defaultRefPlugin(kind guest.Kind) string {
	if kind == guest.KindWASM {
		return filepath.Join("conformance", "refplugin.wasm")
	}
	return filepath.Join("conformance", "refplugin")
}

// locateRefPlugin finds kind's reference plugin: flagValue (checked), else
// conformance/refplugin[.wasm] in exeDir, else the source tree in cwd, to
// build it from (sourceDir). The error says what to do.
func locateRefPlugin(kind guest.Kind, flagValue, exeDir, cwd string) (plugin, sourceDir string, err error) {
	if flagValue != "" {
		if err := checkRefPlugin(kind, flagValue); err != nil {
			return "", "", fmt.Errorf("--plugin %w", err)
		}
		return flagValue, "", nil
	}
	var looked string
	if exeDir != "" {
		p := filepath.Join(exeDir, defaultRefPlugin(kind))
		looked = " at " + p
		if _, err := os.Stat(p); err == nil {
			if err := checkRefPlugin(kind, p); err != nil {
				return "", "", fmt.Errorf("%w\nrebuild it with `make build`, or pass --plugin PATH", err)
			}
			return p, "", nil
		}
	}
	if isSourceTree(cwd) {
		if _, err := exec.LookPath("go"); err != nil {
			return "", "", fmt.Errorf("no reference plugin%s, and no go command to build it from the source tree: "+
				"install Go, run `make build`, or pass --plugin PATH", looked)
		}
		return "", cwd, nil
	}
	return "", "", fmt.Errorf("no reference plugin%s, and the current directory is not the Casparian source tree to build it from:\n"+
		"run `make build` (it puts the reference plugins in bin/conformance/ next to bin/casparian), "+
		"or pass --plugin PATH (a %s built from ./conformance/refplugin)", looked, artifactName(kind))
}

func artifactName(kind guest.Kind) string {
	if kind == guest.KindWASM {
		return "WASM module"
	}
	return "go-plugin executable"
}

// checkRefPlugin checks that path can be kind's reference plugin: a regular
// file, executable for a go-plugin, a WebAssembly module for WASM. Errors
// start with the path.
func checkRefPlugin(kind guest.Kind, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, pathErr(err))
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a file", path)
	}
	head := make([]byte, 4)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, pathErr(err))
	}
	n, _ := io.ReadFull(f, head)
	f.Close()
	isWASM := bytes.Equal(head[:n], []byte("\x00asm"))
	switch kind {
	case guest.KindGoPlugin:
		if isWASM {
			return fmt.Errorf("%s is a WASM module, not a go-plugin executable: use --guest wasm", path)
		}
		if runtime.GOOS != "windows" && st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not executable: the go-plugin reference plugin is an executable built from ./conformance/refplugin "+
				"(make build puts it in bin/conformance/refplugin)", path)
		}
	case guest.KindWASM:
		if !isWASM {
			return fmt.Errorf("%s is not a WebAssembly module: the WASM reference plugin is built from ./conformance/refplugin "+
				"with GOOS=wasip1 GOARCH=wasm (make build puts it in bin/conformance/refplugin.wasm)", path)
		}
	}
	return nil
}

// isSourceTree reports whether dir is the product's source tree: its go.mod
// declares the module and it has the reference plugin's source.
func isSourceTree(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			found = strings.Trim(strings.TrimSpace(rest), `"`) == modulePath
			break
		}
	}
	if !found {
		return false
	}
	st, err := os.Stat(filepath.Join(dir, "conformance", "refplugin"))
	return err == nil && st.IsDir()
}
