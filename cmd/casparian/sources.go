package main

// Source roots, scanning and routing:
//
//	casparian source add [--ignore PATTERN]... PATH...   watch directory trees
//	casparian source list
//	casparian ignore [--root PATH] PATTERN...            gitignore-style exclusions
//	casparian route add [--priority N] GLOB TAG          files matching GLOB get TAG
//	casparian route list
//	casparian subscribe PLUGIN TAG...                    PLUGIN runs on files tagged TAG
//	casparian scan                                       one scan now
//	casparian files                                      the files and their versions

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/casparianflow/casparian/sentinel/scan"
)

// stringsFlag collects a repeatable flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

func cmdSource(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "add" && args[0] != "list") {
		fmt.Fprint(stderr, "Usage: casparian source add [--ignore PATTERN]... PATH...\n       casparian source list\n")
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("source "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	var ignores stringsFlag
	if sub == "add" {
		fs.Var(&ignores, "ignore", "gitignore-style pattern to skip under these roots (repeatable)")
	}
	if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
		return rc
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "casparian source %s: %v\n", sub, err)
		return 1
	}
	if sub == "list" {
		s, err := openExistingStore(ctx, *db)
		if err != nil {
			return fail(err)
		}
		defer s.Close()
		roots, err := s.SourceRoots(ctx)
		if err != nil {
			return fail(err)
		}
		if len(roots) == 0 {
			fmt.Fprintln(stdout, "no source roots; add one with: casparian source add PATH")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPATH\tACTIVE\tIGNORE RULES")
		for _, r := range roots {
			rules, err := s.IgnoreRules(ctx, r.ID)
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(tw, "%d\t%s\t%v\t%s\n", r.ID, r.Path, r.Active, orDash(strings.Join(rules, " ")))
		}
		tw.Flush()
		return 0
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "casparian source add: name at least one directory")
		return 2
	}
	s, err := openStore(ctx, *db)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	for _, p := range fs.Args() {
		r, err := s.AddSourceRoot(ctx, p)
		if err != nil {
			return fail(err)
		}
		for _, pat := range ignores {
			if _, err := scan.NewIgnore([]string{pat}); err != nil {
				return fail(err)
			}
			if err := s.AddIgnoreRule(ctx, r.ID, pat); err != nil {
				return fail(err)
			}
		}
		fmt.Fprintf(stdout, "source root %d: %s\n", r.ID, r.Path)
	}
	fmt.Fprintf(stdout, "next: casparian scan --database %s (or run the sentinel with --scan-interval)\n", shellQuote(*db))
	return 0
}

func cmdIgnore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ignore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	root := fs.String("root", "", "apply to this source root only (default: every root)")
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "Usage: casparian ignore [--root PATH] PATTERN...")
		return 2
	}
	s, err := openStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian ignore: %v\n", err)
		return 1
	}
	defer s.Close()
	var rootID int64
	if *root != "" {
		r, err := s.AddSourceRoot(ctx, *root)
		if err != nil {
			fmt.Fprintf(stderr, "casparian ignore: %v\n", err)
			return 1
		}
		rootID = r.ID
	}
	for _, pat := range fs.Args() {
		if _, err := scan.NewIgnore([]string{pat}); err != nil {
			fmt.Fprintf(stderr, "casparian ignore: %v\n", err)
			return 2
		}
		if err := s.AddIgnoreRule(ctx, rootID, pat); err != nil {
			fmt.Fprintf(stderr, "casparian ignore: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "%d ignore rule(s) added\n", fs.NArg())
	return 0
}

func cmdRoute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "add" && args[0] != "list") {
		fmt.Fprint(stderr, "Usage: casparian route add [--priority N] GLOB TAG\n       casparian route list\n")
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("route "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	priority := fs.Int64("priority", 0, "rule priority (higher first)")
	if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
		return rc
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "casparian route %s: %v\n", sub, err)
		return 1
	}
	if sub == "add" {
		if fs.NArg() != 2 {
			fmt.Fprintln(stderr, "Usage: casparian route add [--priority N] GLOB TAG   (e.g. casparian route add '*.csv' csv)")
			return 2
		}
		if _, err := scan.CompileTagRule(fs.Arg(0), fs.Arg(1)); err != nil {
			fmt.Fprintf(stderr, "casparian route add: %v\n", err)
			return 2
		}
		s, err := openStore(ctx, *db)
		if err != nil {
			return fail(err)
		}
		defer s.Close()
		if err := s.AddRoutingRule(ctx, fs.Arg(0), fs.Arg(1), *priority); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "files matching %s are tagged %s\n", fs.Arg(0), fs.Arg(1))
		return 0
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	rules, err := s.RoutingRules(ctx)
	if err != nil {
		return fail(err)
	}
	subs, err := s.Subscriptions(ctx)
	if err != nil {
		return fail(err)
	}
	byTag := map[string][]string{}
	for p, tags := range subs {
		for _, t := range tags {
			byTag[t] = append(byTag[t], p)
		}
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPATTERN\tTAG\tPRIORITY\tSUBSCRIBED PLUGINS")
	for _, r := range rules {
		ps := byTag[r.Tag]
		sort.Strings(ps)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", r.ID, r.Pattern, r.Tag, r.Priority, orDash(strings.Join(ps, ",")))
	}
	tw.Flush()
	return 0
}

func cmdSubscribe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("subscribe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() < 2 {
		fmt.Fprintln(stderr, "Usage: casparian subscribe PLUGIN TAG...   (the plugin runs on every new file version with one of the tags)")
		return 2
	}
	s, err := openStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian subscribe: %v\n", err)
		return 1
	}
	defer s.Close()
	if err := s.Subscribe(ctx, fs.Arg(0), fs.Args()[1:]); err != nil {
		fmt.Fprintf(stderr, "casparian subscribe: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "plugin %s subscribes to %s\n", fs.Arg(0), strings.Join(fs.Args()[1:], ", "))
	if _, _, err := s.ActiveManifest(ctx, fs.Arg(0)); err != nil {
		fmt.Fprintf(stdout, "note: plugin %s has no active version yet; its jobs wait in the queue until it is registered (casparian enqueue --plugin-file)\n", fs.Arg(0))
	}
	return 0
}

func cmdScan(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scan", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian scan: %v\n", err)
		return 1
	}
	defer s.Close()
	rep, err := scan.Scan(ctx, s, scan.Options{Logger: slog.New(slog.DiscardHandler)})
	for _, w := range rep.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "casparian scan: %v\n", err)
		return 1
	}
	printScanReport(stdout, rep)
	if rep.Roots == 0 {
		fmt.Fprintln(stdout, "no source root was scanned; add one with: casparian source add PATH")
	}
	return 0
}

func printScanReport(w io.Writer, rep scan.Report) {
	fmt.Fprintf(w, "scanned %d root(s): %d files (%d unchanged, %d hashed), %d ignored, %d new version(s), %d job(s) queued",
		rep.Roots, rep.Files, rep.Unchanged, rep.Hashed, rep.Ignored, rep.NewVersions, len(rep.Jobs))
	if len(rep.Jobs) > 0 {
		fmt.Fprintf(w, " (%s)", idRange(rep.Jobs))
	}
	if len(rep.Warnings) > 0 {
		fmt.Fprintf(w, ", %d warning(s)", len(rep.Warnings))
	}
	fmt.Fprintln(w)
}

func cmdFiles(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("files", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	limit := fs.Int("limit", 1000, "at most this many files")
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian files: %v\n", err)
		return 1
	}
	defer s.Close()
	files, err := s.Files(ctx, *limit)
	if err != nil {
		fmt.Fprintf(stderr, "casparian files: %v\n", err)
		return 1
	}
	if len(files) == 0 {
		fmt.Fprintln(stdout, "no files known; casparian source add PATH, then casparian scan")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FILE\tVERSION\tVERSIONS\tSIZE\tSHA-256\tTAGS")
	for _, f := range files {
		h := f.Hash
		if len(h) > 12 {
			h = h[:12]
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", filepath.Join(f.Root, f.RelPath), f.VersionID, f.Versions,
			strconv.FormatInt(f.Size, 10), orDash(h), orDash(f.Tags))
	}
	tw.Flush()
	return 0
}

func cmdPlugins(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian plugins: %v\n", err)
		return 1
	}
	defer s.Close()
	ps, err := s.Plugins(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "casparian plugins: %v\n", err)
		return 1
	}
	if len(ps) == 0 {
		fmt.Fprintln(stdout, "no plugins; publish one with casparian publish, or casparian enqueue --plugin-file")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tACTIVE VERSION\tKIND\tMANIFEST\tVERSIONS\tDEPLOYED\tSUBSCRIBES TO")
	for _, p := range ps {
		active, manifest := orDash(p.Version), "-"
		if p.ManifestID > 0 {
			manifest = strconv.FormatInt(p.ManifestID, 10)
		} else {
			active = "(none: jobs wait)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Name, active, orDash(p.Kind), manifest, p.Versions,
			orDash(p.DeployedAt), orDash(p.Subscriptions))
	}
	tw.Flush()
	return 0
}

func cmdRequeue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("requeue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	plugin := fs.String("plugin", "", "only this plugin's FAILED jobs")
	all := fs.Bool("all-failed", false, "requeue every FAILED job (of --plugin, if given)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian requeue [--database DB] JOB_ID...\n       casparian requeue [--database DB] --all-failed [--plugin NAME]\n\n"+
			"Run FAILED jobs again: back to QUEUED, retries from zero, the last error kept.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	var ids []int64
	for _, a := range fs.Args() {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			fmt.Fprintf(stderr, "casparian requeue: %q is not a job id\n", a)
			return 2
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 && !*all {
		fs.Usage()
		return 2
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian requeue: %v\n", err)
		return 1
	}
	defer s.Close()
	got, err := s.Requeue(ctx, *plugin, ids)
	if err != nil {
		fmt.Fprintf(stderr, "casparian requeue: %v\n", err)
		return 1
	}
	if len(got) == 0 {
		fmt.Fprintln(stdout, "no FAILED job to requeue")
		return 0
	}
	fmt.Fprintf(stdout, "requeued %d job(s): %s\n", len(got), idRange(got))
	if len(ids) > len(got) {
		fmt.Fprintf(stderr, "note: %d of the given jobs were not FAILED and were left alone\n", len(ids)-len(got))
	}
	return 0
}
