package main

// Operator commands on the sentinel's SQLite database:
//
//	casparian jobs     [--database DSN] [--status S[,S]] [--plugin P] [--limit N] [--json]
//	casparian workers  [--database DSN] [--json]
//	casparian enqueue  [--database DSN] --plugin NAME [--plugin-file PLUGIN] [--version V]
//	                   [--priority N] [--sink TOPIC=URI ...] FILE|DIR...

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/sentinel/store"
)

// defaultDatabase is the original system's default database.
const defaultDatabase = "sqlite://casparian_flow.db"

// databaseEnv names the environment variable that replaces defaultDatabase.
const databaseEnv = "CASPARIAN_DATABASE"

// databaseFlag registers --database on fs. Its default is
// $CASPARIAN_DATABASE when set, else sqlite://casparian_flow.db; an explicit
// flag wins over both. The value is a DSN for openStore.
func databaseFlag(fs *flag.FlagSet) *string {
	def := defaultDatabase
	if v := os.Getenv(databaseEnv); v != "" {
		def = v
	}
	return fs.String("database", def,
		"SQLite database: sqlite://REL/PATH, sqlite:///ABS/PATH or a plain path (default from $"+databaseEnv+" when set)")
}

// openStore opens the database named by dsn ("sqlite://rel", "sqlite:///abs"
// or a plain path), creating the file and the cf_* schema if needed, and
// migrating a database written by the original system.
func openStore(ctx context.Context, dsn string) (*store.Store, error) {
	return openStoreWith(ctx, dsn, store.Options{})
}

// openStoreWith is openStore with store options.
func openStoreWith(ctx context.Context, dsn string, opts store.Options) (*store.Store, error) {
	path, err := store.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	if dir := filepath.Dir(path); dir != "" {
		if st, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("database %s: directory %s: %w", path, dir, pathErr(err))
		} else if !st.IsDir() {
			return nil, fmt.Errorf("database %s: %s is not a directory", path, dir)
		}
	}
	return store.Open(ctx, dsn, opts)
}

// openExistingStore is openStore for read-mostly commands: it refuses to
// create a database that does not exist.
func openExistingStore(ctx context.Context, dsn string) (*store.Store, error) {
	path, err := store.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no database at %s; start the sentinel with --database %s or run casparian enqueue first",
			path, shellQuote(dsn))
	}
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", path, pathErr(err))
	}
	if st.IsDir() {
		return nil, fmt.Errorf("database %s is a directory", path)
	}
	return openStore(ctx, dsn)
}

// pathErr drops the path an *os.PathError repeats (the caller names it).
func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// adminNow is the clock of the relative times in tables (tests fix it).
var adminNow = time.Now

// parseAdminFlags parses args and returns -1 to go on, else the exit code.
func parseAdminFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	return -1
}

// ---- casparian jobs ----

func cmdJobs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("jobs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	statusFlag := fs.String("status", "", "only jobs in these statuses, comma-separated ("+strings.Join(store.Statuses, ", ")+")")
	plugin := fs.String("plugin", "", "only jobs of this plugin")
	file := fs.String("file", "", "only jobs whose input path contains this text")
	limit := fs.Int("limit", 50, "show at most N jobs, newest first")
	asJSON := fs.Bool("json", false, "print a JSON array of job objects instead of the table")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian jobs [flags]\n\nList the job queue, newest first, with a count per status.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "casparian jobs: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	if *limit < 1 {
		fmt.Fprintln(stderr, "casparian jobs: --limit must be at least 1")
		return 2
	}
	statuses, err := parseStatuses(*statusFlag)
	if err != nil {
		fmt.Fprintf(stderr, "casparian jobs: %v\n", err)
		return 2
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian jobs: %v\n", err)
		return 1
	}
	defer s.Close()
	jobs, err := s.List(ctx, store.Filter{Statuses: statuses, Plugin: *plugin, File: *file, Limit: *limit})
	if err != nil {
		fmt.Fprintf(stderr, "casparian jobs: %v\n", err)
		return 1
	}
	if *asJSON {
		out := make([]jobJSON, 0, len(jobs))
		for _, j := range jobs {
			out = append(out, toJobJSON(j))
		}
		return printJSONTo(stdout, stderr, "jobs", out)
	}
	counts, err := s.Counts(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "casparian jobs: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "queue: "+countsLine(counts, store.Statuses, "empty"))
	if len(jobs) == 0 {
		if len(statuses) > 0 || *plugin != "" {
			fmt.Fprintln(stdout, "no jobs match the filter")
		} else {
			fmt.Fprintf(stdout, "no jobs yet; add some with: casparian enqueue --database %s --plugin NAME FILE...\n", shellQuote(*db))
		}
		return 0
	}
	fmt.Fprintln(stdout)
	printJobsTable(stdout, jobs, adminNow())
	if len(jobs) == *limit {
		fmt.Fprintf(stdout, "\n(the newest %d shown; --limit shows more)\n", len(jobs))
	}
	return 0
}

// parseStatuses splits "queued,Running" into known statuses, upper-cased.
func parseStatuses(v string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(v, ",") {
		p = strings.ToUpper(strings.TrimSpace(p))
		if p == "" {
			continue
		}
		known := false
		for _, st := range store.Statuses {
			known = known || st == p
		}
		if !known {
			return nil, fmt.Errorf("--status: unknown status %q (one of %s)", p, strings.Join(store.Statuses, ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

// countsLine renders "3 QUEUED · 1 RUNNING": the non-zero counts in the
// given order, then any other status found, sorted; none when all are zero.
func countsLine(counts map[string]int64, order []string, none string) string {
	var parts []string
	seen := map[string]bool{}
	for _, st := range order {
		seen[st] = true
		if n := counts[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	var other []string
	for st, n := range counts {
		if !seen[st] && n > 0 {
			other = append(other, st)
		}
	}
	sort.Strings(other)
	for _, st := range other {
		name := st
		if name == "" {
			name = "(none)"
		}
		parts = append(parts, fmt.Sprintf("%d %s", counts[st], tableCell(name, 20)))
	}
	if len(parts) == 0 {
		return none
	}
	return strings.Join(parts, " · ")
}

// errorCellWidth bounds the ERROR column.
const errorCellWidth = 60

func printJobsTable(w io.Writer, jobs []store.Job, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPLUGIN\tATTEMPT\tWORKER\tUPDATED\tERROR")
	for _, j := range jobs {
		worker := "-"
		if j.Status == store.StatusRunning && j.LeaseOwner != "" {
			worker = tableCell(j.LeaseOwner, 30)
		}
		errText := j.LastError
		if j.Status == store.StatusFailed && j.ErrorMessage != "" {
			errText = j.ErrorMessage
		}
		if j.Status == store.StatusCompleted {
			errText = "" // an earlier attempt's error is history
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\n", j.ID, tableCell(j.Status, 12), tableCell(j.PluginName, 30),
			j.Attempt, worker, jobUpdated(j, now), orDash(tableCell(firstLineOf(errText), errorCellWidth)))
	}
	tw.Flush()
}

// jobUpdated is the UPDATED cell: when a pending retry is due ("retry in
// 4s"), else how long ago the job last changed (end or claim), else "-"
// (the queue keeps no enqueue time).
func jobUpdated(j store.Job, now time.Time) string {
	if j.Status == store.StatusQueued && j.NextAttemptAt.After(now) {
		return "retry " + relTime(now, j.NextAttemptAt)
	}
	t := j.EndTime
	if j.ClaimTime.After(t) {
		t = j.ClaimTime
	}
	return relTime(now, t)
}

type jobJSON struct {
	ID              int64           `json:"id"`
	Status          string          `json:"status"`
	PluginName      string          `json:"plugin_name"`
	FileVersionID   int64           `json:"file_version_id"`
	Priority        int64           `json:"priority"`
	Attempt         int64           `json:"attempt"`
	RetryCount      int64           `json:"retry_count"`
	LeaseOwner      string          `json:"lease_owner"`
	LeaseExpiresAt  *time.Time      `json:"lease_expires_at"`
	NextAttemptAt   *time.Time      `json:"next_attempt_at"`
	ClaimTime       *time.Time      `json:"claim_time"`
	EndTime         *time.Time      `json:"end_time"`
	ConfigOverrides json.RawMessage `json:"config_overrides"`
	ResultSummary   string          `json:"result_summary"`
	Result          json.RawMessage `json:"result"`
	ErrorMessage    string          `json:"error_message"`
	LastError       string          `json:"last_error"`
}

func toJobJSON(j store.Job) jobJSON {
	return jobJSON{
		ID: j.ID, Status: j.Status, PluginName: j.PluginName, FileVersionID: j.FileVersionID,
		Priority: j.Priority, Attempt: j.Attempt, RetryCount: j.RetryCount, LeaseOwner: j.LeaseOwner,
		LeaseExpiresAt: timePtr(j.LeaseExpiresAt), NextAttemptAt: timePtr(j.NextAttemptAt),
		ClaimTime: timePtr(j.ClaimTime), EndTime: timePtr(j.EndTime),
		ConfigOverrides: rawJSON(j.ConfigOverrides), ResultSummary: j.ResultSummary, Result: rawJSON(j.ResultJSON),
		ErrorMessage: j.ErrorMessage, LastError: j.LastError,
	}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// rawJSON embeds JSON text as is: null when empty, a JSON string when the
// text is not valid JSON (hand-written rows).
func rawJSON(s string) json.RawMessage {
	if s == "" {
		return json.RawMessage("null")
	}
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

func printJSONTo(stdout, stderr io.Writer, cmd string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "casparian %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// ---- casparian workers ----

func cmdWorkers(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("workers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	asJSON := fs.Bool("json", false, "print a JSON array of worker objects instead of the table")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian workers [flags]\n\nList the workers the sentinel has seen, live ones first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "casparian workers: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	s, err := openExistingStore(ctx, *db)
	if err != nil {
		fmt.Fprintf(stderr, "casparian workers: %v\n", err)
		return 1
	}
	defer s.Close()
	ws, err := s.ListWorkers(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "casparian workers: %v\n", err)
		return 1
	}
	if *asJSON {
		out := make([]workerJSON, 0, len(ws))
		for _, w := range ws {
			out = append(out, toWorkerJSON(w))
		}
		return printJSONTo(stdout, stderr, "workers", out)
	}
	if len(ws) == 0 {
		fmt.Fprintf(stdout, "no workers registered in %s\n", s.Path())
		fmt.Fprintln(stdout, "start one with: casparian worker --connect tcp://127.0.0.1:5555 --output DIR")
		return 0
	}
	counts := map[string]int64{}
	for _, w := range ws {
		counts[w.Status]++
	}
	fmt.Fprintln(stdout, "workers: "+countsLine(counts, store.WorkerStatuses, "none"))
	fmt.Fprintln(stdout)
	printWorkersTable(stdout, ws, adminNow())
	return 0
}

func printWorkersTable(w io.Writer, ws []store.WorkerRecord, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tHOST\tPID\tSTATUS\tSLOTS\tJOBS\tCAPABILITIES\tLAST SEEN")
	for _, r := range ws {
		status := r.Status
		if r.StatusReason != "" {
			status += " (" + firstLineOf(r.StatusReason) + ")"
		}
		slots := "-"
		if r.Slots > 0 || r.BusySlots > 0 {
			slots = fmt.Sprintf("%d/%d", r.BusySlots, r.Slots)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", orDash(tableCell(r.WorkerID, 30)), orDash(tableCell(r.Hostname, 30)),
			r.PID, tableCell(status, 40), slots, jobIDsCell(r.ActiveJobIDs, 5),
			orDash(tableCell(strings.Join(r.Capabilities, ","), 40)), relTime(now, r.LastHeartbeat))
	}
	tw.Flush()
}

// jobIDsCell lists up to max ids, then "+N".
func jobIDsCell(ids []int64, max int) string {
	if len(ids) == 0 {
		return "-"
	}
	var parts []string
	for i, id := range ids {
		if i == max {
			parts = append(parts, fmt.Sprintf("+%d", len(ids)-max))
			break
		}
		parts = append(parts, strconv.FormatInt(id, 10))
	}
	return strings.Join(parts, ",")
}

type workerJSON struct {
	WorkerID      string     `json:"worker_id"`
	Hostname      string     `json:"hostname"`
	PID           int        `json:"pid"`
	Endpoint      string     `json:"endpoint"`
	Capabilities  []string   `json:"capabilities"`
	Slots         int        `json:"slots"`
	BusySlots     int        `json:"busy_slots"`
	ActiveJobIDs  []int64    `json:"active_job_ids"`
	Status        string     `json:"status"`
	StatusReason  string     `json:"status_reason"`
	StartedAt     *time.Time `json:"started_at"`
	LastHeartbeat *time.Time `json:"last_heartbeat"`
}

func toWorkerJSON(w store.WorkerRecord) workerJSON {
	out := workerJSON{
		WorkerID: w.WorkerID, Hostname: w.Hostname, PID: w.PID, Endpoint: w.Endpoint,
		Capabilities: w.Capabilities, Slots: w.Slots, BusySlots: w.BusySlots, ActiveJobIDs: w.ActiveJobIDs,
		Status: w.Status, StatusReason: w.StatusReason,
		StartedAt: timePtr(w.StartedAt), LastHeartbeat: timePtr(w.LastHeartbeat),
	}
	if out.Capabilities == nil {
		out.Capabilities = []string{}
	}
	if out.ActiveJobIDs == nil {
		out.ActiveJobIDs = []int64{}
	}
	return out
}

// ---- casparian enqueue ----

// enqueueInput is one file to register: Root/RelPath.
type enqueueInput struct {
	full, root, rel string
}

func cmdEnqueue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("enqueue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := databaseFlag(fs)
	plugin := fs.String("plugin", "", "plugin name the jobs run (default: the --plugin-file name without its extension)")
	pluginFile := fs.String("plugin-file", "", "register this plugin first (a .py file, a go-plugin executable, a .wasm module or a manifest .json) as the ACTIVE version")
	version := fs.String("version", "", `version recorded with --plugin-file (default "0.0.0")`)
	priority := fs.Int64("priority", 0, "job priority: higher runs first")
	var sinks multiFlag
	fs.Var(&sinks, "sink", "add an output topic for the plugin, TOPIC=URI, unless the topic is already configured; repeatable")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian enqueue [flags] --plugin NAME FILE|DIR...\n\n"+
			"Queue one job per file for the sentinel. A DIR is read recursively (hidden files\n"+
			"skipped) and its files keep their paths under it.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "casparian enqueue: "+format+"\n", a...)
		fs.Usage()
		return 2
	}
	name := *plugin
	if name == "" && *pluginFile != "" {
		name = strings.TrimSuffix(filepath.Base(*pluginFile), filepath.Ext(*pluginFile))
	}
	if name == "" {
		return usageErr("--plugin is required")
	}
	if fs.NArg() == 0 {
		return usageErr("at least one FILE or DIR is required")
	}
	if *version != "" && *pluginFile == "" {
		return usageErr("--version applies to --plugin-file only")
	}
	var wantSinks []store.Sink
	for _, v := range sinks {
		topic, uri, ok := strings.Cut(v, "=")
		if !ok || topic == "" || uri == "" {
			return usageErr("--sink %q is not TOPIC=URI", v)
		}
		wantSinks = append(wantSinks, store.Sink{Topic: topic, URI: uri})
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "casparian enqueue: %v\n", err)
		return 1
	}
	var source []byte
	var artifactHash string
	if *pluginFile != "" {
		m, err := manifest.Resolve(*pluginFile)
		if err != nil {
			return fail(fmt.Errorf("--plugin-file: %w", err))
		}
		if m.Kind == guest.KindPython && !strings.EqualFold(filepath.Ext(*pluginFile), ".json") {
			// Python plugins travel as source code in every DISPATCH.
			if source, err = os.ReadFile(m.Artifact); err != nil {
				return fail(fmt.Errorf("--plugin-file: %w", err))
			}
			if len(source) == 0 {
				return fail(fmt.Errorf("--plugin-file %s is empty", *pluginFile))
			}
		} else {
			// Binary plugins (go-plugin, WASM) are stored as their manifest,
			// with the artifact's absolute path: workers must see that path
			// (shared storage) and check its SHA-256 before running it.
			if m.Kind == guest.KindPython {
				return fail(fmt.Errorf("--plugin-file %s: pass the .py file of a Python plugin, not a manifest", *pluginFile))
			}
			if *version == "" && m.Version != "" {
				*version = m.Version
			}
			if *plugin == "" {
				name = m.Name
			}
			m.Name = name
			// artifact_hash as a DEPLOY defines it: sha256 of the source
			// (the manifest, which names the binary's own SHA-256).
			source = m.Encode()
			sum := sha256.Sum256(source)
			artifactHash = hex.EncodeToString(sum[:])
		}
	}
	inputs, err := enqueueInputs(fs.Args())
	if err != nil {
		return fail(err)
	}
	if len(inputs) == 0 {
		return fail(fmt.Errorf("no input files found in %s", strings.Join(fs.Args(), " ")))
	}

	s, err := openStore(ctx, *db)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	if source != nil {
		if _, err := s.AddPlugin(ctx, store.PluginSpec{Name: name, Version: *version, SourceCode: string(source),
			ArtifactHash: artifactHash}); err != nil {
			return fail(err)
		}
	}
	mid, mver, err := s.ActiveManifest(ctx, name)
	if errors.Is(err, store.ErrNoActiveManifest) {
		return fail(fmt.Errorf("plugin %s has no active manifest: pass --plugin-file (a .py file, a go-plugin executable, a .wasm module or a manifest) to register it", name))
	} else if err != nil {
		return fail(err)
	}
	if source != nil {
		fmt.Fprintf(stdout, "plugin %s: manifest %d (version %s) from %s is active\n", name, mid, mver, *pluginFile)
		if *version != "" && *version != mver {
			// AddPlugin re-activates a stored manifest with identical source.
			fmt.Fprintf(stderr, "warning: this source was already stored as version %s; --version %s not recorded\n", mver, *version)
		}
	}
	if len(wantSinks) > 0 {
		have, err := s.ConfiguredSinks(ctx, name)
		if err != nil {
			return fail(err)
		}
		byTopic := map[string]string{}
		for _, k := range have {
			if _, dup := byTopic[k.Topic]; !dup {
				byTopic[k.Topic] = k.URI
			}
		}
		for _, k := range wantSinks {
			if uri, ok := byTopic[k.Topic]; ok {
				if uri != k.URI {
					fmt.Fprintf(stderr, "warning: plugin %s already sends topic %s to %s; --sink %s=%s ignored\n",
						name, k.Topic, uri, k.Topic, k.URI)
				}
				continue
			}
			if err := s.AddSink(ctx, name, k); err != nil {
				return fail(err)
			}
			byTopic[k.Topic] = k.URI
			fmt.Fprintf(stdout, "plugin %s: topic %s → %s\n", name, k.Topic, k.URI)
		}
	}
	// Files are registered one by one (registering again is harmless), the
	// jobs in one transaction: all of them, or none.
	specs := make([]store.JobSpec, 0, len(inputs))
	for _, in := range inputs {
		fv, err := s.AddFile(ctx, store.FileSpec{Root: in.root, RelPath: in.rel})
		if err != nil {
			return fail(fmt.Errorf("%w (no job was enqueued)", err))
		}
		specs = append(specs, store.JobSpec{FileVersionID: fv, PluginName: name, Priority: *priority})
	}
	ids, err := s.EnqueueMany(ctx, specs)
	if err != nil {
		return fail(fmt.Errorf("%w (no job was enqueued)", err))
	}
	noun := "jobs"
	if len(ids) == 1 {
		noun = "job"
	}
	fmt.Fprintf(stdout, "enqueued %d %s (%s) for plugin %s\n", len(ids), noun, idRange(ids), name)
	fmt.Fprintf(stdout, "run: casparian jobs --database %s\n", shellQuote(*db))
	return 0
}

// enqueueInputs expands FILE and DIR arguments. A FILE is registered under
// its own directory; a DIR is walked recursively (hidden files and
// directories skipped, symlinks not followed) and its files keep their
// paths under it. The result is de-duplicated and sorted by path.
func enqueueInputs(args []string) ([]enqueueInput, error) {
	seen := map[string]bool{}
	var out []enqueueInput
	add := func(root, rel string) {
		full := filepath.Join(root, rel)
		if !seen[full] {
			seen[full] = true
			out = append(out, enqueueInput{full: full, root: root, rel: filepath.ToSlash(rel)})
		}
	}
	for _, a := range args {
		abs, err := filepath.Abs(a)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", a, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", a, pathErr(err))
		}
		if st.Mode().IsRegular() {
			add(filepath.Dir(abs), filepath.Base(abs))
			continue
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("input %s is not a regular file or a directory", a)
		}
		err = filepath.WalkDir(abs, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p != abs && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type().IsRegular() {
				rel, err := filepath.Rel(abs, p)
				if err != nil {
					return err
				}
				add(abs, rel)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", a, err)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].full < out[j].full })
	return out, nil
}

// idRange renders job ids: "id 7", "ids 7–9", or "ids 3, 5–6" when others
// enqueued at the same time.
func idRange(ids []int64) string {
	if len(ids) == 1 {
		return fmt.Sprintf("id %d", ids[0])
	}
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.FormatInt(ids[i], 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d–%d", ids[i], ids[j]))
		}
		i = j + 1
	}
	if len(parts) > 4 {
		parts = append(parts[:3], "…", parts[len(parts)-1])
	}
	return "ids " + strings.Join(parts, ", ")
}

// ---- table helpers ----

// tableCell makes a value safe for one table cell: control characters (a
// worker's error text could carry terminal escapes) become '?', tabs and
// newlines spaces, and it is cut to max runes, the last one "…".
func tableCell(s string, max int) string {
	rs := []rune(s)
	if len(rs) > max {
		rs = append(rs[:max-1], '…')
	}
	for i, r := range rs {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			rs[i] = ' '
		case unicode.IsControl(r) || r == utf8.RuneError || unicode.Is(unicode.Bidi_Control, r):
			rs[i] = '?'
		}
	}
	return string(rs)
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// firstLineOf is the first non-empty line of s, trimmed.
func firstLineOf(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// relTime renders t relative to now: "3s ago", "in 4s", "5m ago", "2h ago",
// "3d ago"; a date past a month; "-" for the zero time.
func relTime(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		s = fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		s = fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh", int(d/time.Hour))
	case d < 31*24*time.Hour:
		s = fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	default:
		return t.UTC().Format("2006-01-02")
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// shellQuote quotes s for a copy-pasteable hint when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r < utf8.RuneSelf && (r == '/' || r == '.' || r == '_' || r == '-' || r == ':' || r == '=' ||
			r == '+' || r == ',' || r == '@' || unicode.IsLetter(r) || unicode.IsDigit(r)))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
