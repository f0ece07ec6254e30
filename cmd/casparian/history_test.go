package main_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/parquet/file"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// The recorded-history checker of the fault suite. While a scenario runs,
// a poller records every job's (status, attempt) and every process the
// daemons start; afterwards checkHistory stops the daemons and checks:
//
//   - every job ended as the scenario expects (COMPLETED, or FAILED with
//     its reason), none QUEUED, RUNNING or PENDING;
//   - attempts never went down and a terminal job never changed again
//     (as polled), and retry_count < attempt;
//   - each COMPLETED job has exactly one Parquet file per topic across the
//     output directories, named in its receipt, with the receipt's row
//     count; no other job has any file, and no temporary file is left;
//   - the sentinels' logs accepted at most one COMPLETED conclusion per job,
//     dispatched each job's attempts in increasing order, and agree with
//     the database;
//   - no daemon printed "panic:" or "fatal error:", and every daemon still
//     running exits on SIGTERM;
//   - no process the daemons started (plugins), and no process running in
//     or naming the test's directories, is left once the daemons are gone.

// jobSnap is a job's state at one poll.
type jobSnap struct {
	status  string
	attempt int64
}

// history records a scenario as it runs.
type history struct {
	c    *cluster
	db   *sql.DB
	stop chan struct{}
	done chan struct{}

	mu          sync.Mutex
	last        map[int64]jobSnap
	transitions int
	polls       int
	violations  []string
	children    map[procKey]procInfo // processes the daemons started
}

// procKey names a process across pid reuse.
type procKey struct {
	pid   int
	start uint64
}

// procInfo is what the checker knows of a process from /proc.
type procInfo struct {
	pid, ppid int
	start     uint64
	state     byte
	cmdline   string
	cwd       string
}

// recordHistory starts recording c's history; checkHistory ends it.
func (c *cluster) recordHistory() *history {
	c.t.Helper()
	db, err := sql.Open("sqlite", c.db+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		c.t.Fatal(err)
	}
	h := &history{c: c, db: db, stop: make(chan struct{}), done: make(chan struct{}),
		last: map[int64]jobSnap{}, children: map[procKey]procInfo{}}
	c.hist = h
	go h.run()
	c.t.Cleanup(h.close)
	return h
}

func (h *history) close() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	h.db.Close()
}

func (h *history) run() {
	defer close(h.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		h.pollJobs()
		if i%2 == 0 {
			h.pollChildren()
		}
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
	}
}

func (h *history) violate(format string, a ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.violations = append(h.violations, fmt.Sprintf(format, a...))
}

// pollJobs reads every job's state and checks it against the previous poll.
func (h *history) pollJobs() {
	rows, err := h.db.Query(`SELECT id, coalesce(status, ''), coalesce(attempt, 0) FROM cf_processing_queue`)
	if err != nil {
		return // the schema may not exist yet, or the file is busy: next poll
	}
	defer rows.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.polls++
	for rows.Next() {
		var id int64
		var s jobSnap
		if err := rows.Scan(&id, &s.status, &s.attempt); err != nil {
			return
		}
		prev, seen := h.last[id]
		h.last[id] = s
		if !seen || prev == s {
			continue
		}
		h.transitions++
		if s.attempt < prev.attempt {
			h.violations = append(h.violations, fmt.Sprintf("[Job %d] attempt went down: %s/%d then %s/%d",
				id, prev.status, prev.attempt, s.status, s.attempt))
		}
		if terminal(prev.status) {
			h.violations = append(h.violations, fmt.Sprintf("[Job %d] left its terminal state: %s/%d then %s/%d",
				id, prev.status, prev.attempt, s.status, s.attempt))
		}
	}
}

func terminal(status string) bool {
	return status == store.StatusCompleted || status == store.StatusFailed
}

// pollChildren records the processes the running daemons started.
func (h *history) pollChildren() {
	daemons := map[int]bool{}
	for _, p := range h.c.allProcs() {
		select {
		case <-p.done:
		default:
			daemons[p.cmd.Process.Pid] = true
		}
	}
	if len(daemons) == 0 {
		return
	}
	all := listProcs()
	byParent := map[int][]procInfo{}
	for _, p := range all {
		byParent[p.ppid] = append(byParent[p.ppid], p)
	}
	var found []procInfo
	var walk func(pid int)
	walk = func(pid int) {
		for _, ch := range byParent[pid] {
			found = append(found, ch)
			walk(ch.pid)
		}
	}
	for pid := range daemons {
		walk(pid)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range found {
		k := procKey{p.pid, p.start}
		if _, ok := h.children[k]; !ok {
			if full, ok := readProc(p.pid); ok && full.start == p.start {
				p = full
			}
			h.children[k] = p
		}
	}
}

// listProcs reads every process of /proc (those that vanish meanwhile are skipped).
func listProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// readProc reads a process's state, parent, start time, command line and
// working directory.
func readProc(pid int) (procInfo, bool) {
	p, ok := readStat(pid)
	if !ok {
		return p, false
	}
	if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		p.cmdline = strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))
	}
	p.cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return p, true
}

// readStat reads a process's state, parent and start time.
func readStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	// pid (comm) state ppid ... starttime is field 22; comm may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return procInfo{}, false
	}
	p := procInfo{pid: pid, state: f[0][0]}
	p.ppid, _ = strconv.Atoi(f[1])
	p.start, _ = strconv.ParseUint(f[19], 10, 64)
	return p, true
}

// alive reports whether the process k is still there (and not a zombie).
func (k procKey) alive() (procInfo, bool) {
	p, ok := readProc(k.pid)
	if !ok || p.start != k.start || p.state == 'Z' || p.state == 'X' {
		return procInfo{}, false
	}
	return p, true
}

// expect is what a scenario expects of its jobs.
type expect struct {
	// failed maps the jobs that must end FAILED to a text their error
	// message must contain ("" for any); every other job must be COMPLETED.
	failed map[int64]string
	// topics, if set, are the topics every COMPLETED job must have written.
	topics []string
	// rows, if set, is the total row count each COMPLETED job must have written.
	rows func(id int64) int64
	// outDirs are the workers' output directories (default: the cluster's).
	outDirs []string
}

// logEvent is one line of a daemon's log (text or JSON format).
type logEvent struct {
	proc  string
	time  time.Time
	msg   string
	attrs map[string]string
}

func (e logEvent) int(key string) int64 {
	n, _ := strconv.ParseInt(e.attrs[key], 10, 64)
	return n
}

// parseLogLine reads a slog line: JSON, or the text handler's key=value.
func parseLogLine(line string) (logEvent, bool) {
	ev := logEvent{attrs: map[string]string{}}
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			return ev, false
		}
		for k, v := range m {
			switch v := v.(type) {
			case string:
				ev.attrs[k] = v
			case float64:
				ev.attrs[k] = strconv.FormatFloat(v, 'f', -1, 64)
			default:
				b, _ := json.Marshal(v)
				ev.attrs[k] = string(b)
			}
		}
	} else {
		s := line
		for s != "" {
			s = strings.TrimLeft(s, " ")
			eq := strings.IndexByte(s, '=')
			if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
				break
			}
			key := s[:eq]
			s = s[eq+1:]
			var val string
			if strings.HasPrefix(s, `"`) {
				q, err := strconv.QuotedPrefix(s)
				if err != nil {
					break
				}
				val, _ = strconv.Unquote(q)
				s = s[len(q):]
			} else {
				end := strings.IndexByte(s, ' ')
				if end < 0 {
					end = len(s)
				}
				val, s = s[:end], s[end:]
			}
			ev.attrs[key] = val
		}
	}
	ev.msg = ev.attrs["msg"]
	t, err := time.Parse(time.RFC3339Nano, ev.attrs["time"])
	if err != nil || ev.msg == "" {
		return ev, false
	}
	ev.time = t
	return ev, true
}

// parseLog parses one daemon's log so far.
func parseLog(p *proc) []logEvent {
	var evs []logEvent
	for _, line := range strings.Split(p.out.String(), "\n") {
		if ev, ok := parseLogLine(line); ok {
			ev.proc = p.name
			evs = append(evs, ev)
		}
	}
	return evs
}

// durations formats a list of durations with their median and maximum.
func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := ""
	for i, d := range ds {
		if i > 0 {
			out += ", "
		}
		out += d.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("[%s] median %s, max %s", out, s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

// logEvents parses the logs of every daemon the cluster started, in time order.
func (c *cluster) logEvents() []logEvent {
	var evs []logEvent
	for _, p := range c.allProcs() {
		evs = append(evs, parseLog(p)...)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].time.Before(evs[j].time) })
	return evs
}

// checkHistory ends the scenario: it stops every daemon and checks the
// recorded history, the database, the outputs, the logs and the process
// table against e, failing the test on any violation. The cluster must be
// idle (every job concluded).
func (c *cluster) checkHistory(e expect) {
	c.t.Helper()
	vs := c.verifyHistory(e)
	for i, v := range vs {
		if i == 30 {
			c.t.Errorf("... and %d more violations", len(vs)-i)
			break
		}
		c.t.Errorf("history: %s", v)
	}
}

// verifyHistory is checkHistory returning the violations.
func (c *cluster) verifyHistory(e expect) []string {
	c.t.Helper()
	h := c.hist
	if h == nil {
		c.t.Fatal("checkHistory without recordHistory")
	}
	before := c.snapshotJobs()
	h.pollJobs()
	h.pollChildren()

	// Stop the daemons: workers first (they have nothing left to conclude),
	// then the sentinel; each must exit on SIGTERM.
	procs := c.allProcs()
	sort.SliceStable(procs, func(i, j int) bool { return procs[i].name != "sentinel" && procs[j].name == "sentinel" })
	for _, p := range procs {
		select {
		case <-p.done:
			continue
		default:
		}
		p.signal(syscall.SIGCONT)
		p.signal(syscall.SIGTERM)
		t0 := time.Now()
		select {
		case <-p.done:
			c.t.Logf("%s stopped in %s", p.name, time.Since(t0).Round(time.Millisecond))
		case <-time.After(20 * time.Second):
			h.violate("%s did not exit within 20 s of SIGTERM", p.name)
			p.kill()
		}
	}
	h.close()

	after := c.snapshotJobs()
	for id, j := range before {
		if a := after[id]; a.Status != j.Status || a.Attempt != j.Attempt {
			h.violate("[Job %d] changed while the daemons stopped: %s/%d then %s/%d", id, j.Status, j.Attempt, a.Status, a.Attempt)
		}
	}

	c.checkJobs(h, after, e)
	c.checkOutputs(h, after, e)
	c.checkLogs(h, after)
	c.checkOrphans(h)

	h.mu.Lock()
	defer h.mu.Unlock()
	c.t.Logf("history: %d jobs, %d state changes seen in %d polls, %d plugin processes seen, %d violations",
		len(after), h.transitions, h.polls, len(h.children), len(h.violations))
	return append([]string(nil), h.violations...)
}

// snapshotJobs reads every job.
func (c *cluster) snapshotJobs() map[int64]store.Job {
	c.t.Helper()
	jobs, err := c.st.List(context.Background(), store.Filter{Limit: 1 << 30})
	if err != nil {
		c.t.Fatal(err)
	}
	out := make(map[int64]store.Job, len(jobs))
	for _, j := range jobs {
		out[j.ID] = j
	}
	return out
}

// checkJobs checks the jobs' final states.
func (c *cluster) checkJobs(h *history, jobs map[int64]store.Job, e expect) {
	for id := range e.failed {
		if _, ok := jobs[id]; !ok {
			h.violate("[Job %d] expected FAILED, but there is no such job", id)
		}
	}
	for id, j := range jobs {
		want := store.StatusCompleted
		reason, wantFailed := e.failed[id]
		if wantFailed {
			want = store.StatusFailed
		}
		if j.Status != want {
			h.violate("[Job %d] is %s after %d attempts (last error %q), want %s", id, j.Status, j.Attempt, firstLine(j.LastError), want)
			continue
		}
		if j.EndTime.IsZero() {
			h.violate("[Job %d] %s without an end time", id, j.Status)
		}
		if j.Attempt >= 1 && j.RetryCount >= j.Attempt {
			h.violate("[Job %d] %d retries for %d attempts", id, j.RetryCount, j.Attempt)
		}
		switch j.Status {
		case store.StatusFailed:
			if j.ErrorMessage == "" {
				h.violate("[Job %d] FAILED without a reason", id)
			} else if !strings.Contains(j.ErrorMessage, reason) {
				h.violate("[Job %d] FAILED with %q, want it to say %q", id, firstLine(j.ErrorMessage), reason)
			}
		case store.StatusCompleted:
			if j.Attempt < 1 || j.ResultJSON == "" {
				h.violate("[Job %d] COMPLETED with attempt %d and result %q", id, j.Attempt, j.ResultJSON)
			}
		}
	}
}

// receipt is a COMPLETED job's result_json.
type receipt struct {
	Metrics   map[string]int64    `json:"metrics"`
	Artifacts []map[string]string `json:"artifacts"`
}

// outputFile is a Parquet file found in an output directory.
type outputFile struct {
	path  string
	job   int64
	topic string
	rows  int64
}

// checkOutputs walks the output directories and matches them to the receipts.
func (c *cluster) checkOutputs(h *history, jobs map[int64]store.Job, e expect) {
	dirs := e.outDirs
	if len(dirs) == 0 {
		dirs = []string{c.out}
	}
	byJob := map[int64]map[string][]outputFile{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) && path == dir {
					return filepath.SkipDir
				}
				return err
			}
			if d.IsDir() {
				return nil
			}
			name := d.Name()
			if strings.HasPrefix(name, ".") || strings.Contains(name, ".tmp") || !strings.HasSuffix(name, ".parquet") {
				h.violate("temporary or stray file %s", path)
				return nil
			}
			f, err := readOutput(path)
			if err != nil {
				h.violate("unreadable output %s: %v", path, err)
				return nil
			}
			if byJob[f.job] == nil {
				byJob[f.job] = map[string][]outputFile{}
			}
			byJob[f.job][f.topic] = append(byJob[f.job][f.topic], f)
			return nil
		})
		if err != nil {
			h.violate("walk %s: %v", dir, err)
		}
	}
	for id, topics := range byJob {
		j, ok := jobs[id]
		if !ok || j.Status != store.StatusCompleted {
			h.violate("[Job %d] has output files but is %s: %v", id, j.Status, topics)
			continue
		}
		for topic, fs := range topics {
			if len(fs) != 1 {
				var paths []string
				for _, f := range fs {
					paths = append(paths, f.path)
				}
				h.violate("[Job %d] topic %s committed %d times: %v", id, topic, len(fs), paths)
			}
		}
	}
	for id, j := range jobs {
		if j.Status != store.StatusCompleted {
			continue
		}
		var rc receipt
		if err := json.Unmarshal([]byte(j.ResultJSON), &rc); err != nil {
			h.violate("[Job %d] result_json %q: %v", id, j.ResultJSON, err)
			continue
		}
		var total int64
		seen := map[string]bool{}
		for _, a := range rc.Artifacts {
			topic, uri := a["topic"], a["uri"]
			rows, _ := strconv.ParseInt(a["rows"], 10, 64)
			total += rows
			seen[topic] = true
			var f *outputFile
			for i, cand := range byJob[id][topic] {
				if cand.path == strings.TrimPrefix(uri, "parquet://") {
					f = &byJob[id][topic][i]
				}
			}
			if f == nil {
				h.violate("[Job %d] receipt names %s (topic %s), which is not an output file of the job", id, uri, topic)
				continue
			}
			if f.rows != rows {
				h.violate("[Job %d] topic %s: the receipt says %d rows, the file holds %d", id, topic, rows, f.rows)
			}
		}
		for topic := range byJob[id] {
			if !seen[topic] {
				h.violate("[Job %d] wrote topic %s that its receipt does not name", id, topic)
			}
		}
		if n, ok := rc.Metrics["rows"]; ok && n != total {
			h.violate("[Job %d] receipt metrics say %d rows, its artifacts %d", id, n, total)
		}
		if e.topics != nil {
			var got []string
			for t := range seen {
				got = append(got, t)
			}
			sort.Strings(got)
			want := append([]string(nil), e.topics...)
			sort.Strings(want)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				h.violate("[Job %d] wrote topics %v, want %v", id, got, want)
			}
		}
		if e.rows != nil {
			if want := e.rows(id); total != want {
				h.violate("[Job %d] wrote %d rows, want %d", id, total, want)
			}
		}
	}
}

// readOutput reads a Parquet file's row count and the job and topic its
// provenance metadata names.
func readOutput(path string) (outputFile, error) {
	rdr, err := file.OpenParquetFile(path, false)
	if err != nil {
		return outputFile{}, err
	}
	defer rdr.Close()
	f := outputFile{path: path, rows: rdr.NumRows()}
	kv := rdr.MetaData().KeyValueMetadata()
	if v := kv.FindValue("casparian.job_id"); v != nil {
		f.job, _ = strconv.ParseInt(*v, 10, 64)
	}
	if v := kv.FindValue("casparian.topic"); v != nil {
		f.topic = *v
	}
	if f.job == 0 || f.topic == "" {
		return f, fmt.Errorf("no casparian.job_id / casparian.topic metadata")
	}
	return f, nil
}

// checkLogs checks the daemons' logs: no panic, and the sentinels' dispatch
// and conclusion events against the database.
func (c *cluster) checkLogs(h *history, jobs map[int64]store.Job) {
	for _, p := range c.allProcs() {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
				h.violate("%s: %s", p.name, line)
			}
		}
	}
	completed := map[int64][]logEvent{}
	lastDispatch := map[int64]int64{}
	for _, ev := range c.logEvents() {
		if ev.proc != "sentinel" {
			continue
		}
		id := ev.int("job_id")
		switch ev.msg {
		case "job dispatched":
			a := ev.int("attempt")
			if a < lastDispatch[id] {
				h.violate("[Job %d] dispatched attempt %d after attempt %d", id, a, lastDispatch[id])
			}
			lastDispatch[id] = a
			if j, ok := jobs[id]; ok && a > j.Attempt {
				h.violate("[Job %d] dispatched attempt %d, the database has %d", id, a, j.Attempt)
			}
		case "job completed":
			completed[id] = append(completed[id], ev)
		}
	}
	for id, evs := range completed {
		if len(evs) > 1 {
			var ws []string
			for _, ev := range evs {
				ws = append(ws, fmt.Sprintf("%s attempt %s at %s", ev.attrs["worker"], ev.attrs["attempt"], ev.time.Format("15:04:05.000")))
			}
			h.violate("[Job %d] COMPLETED %d times: %s", id, len(evs), strings.Join(ws, "; "))
		}
		j := jobs[id]
		if j.Status != store.StatusCompleted || evs[0].int("attempt") != j.Attempt {
			h.violate("[Job %d] the sentinel logged COMPLETED attempt %d; the database has %s attempt %d",
				id, evs[0].int("attempt"), j.Status, j.Attempt)
		}
	}
}

// checkOrphans makes sure nothing the daemons started outlives them.
func (c *cluster) checkOrphans(h *history) {
	self := os.Getpid()
	marks := []string{c.dir, c.sockDir}
	find := func() []procInfo {
		var left []procInfo
		h.mu.Lock()
		for k := range h.children {
			if p, ok := k.alive(); ok {
				left = append(left, p)
			}
		}
		h.mu.Unlock()
		for _, p := range listProcs() {
			if p.pid == self || p.state == 'Z' || p.state == 'X' {
				continue
			}
			if p, _ = readProc(p.pid); p.pid == 0 {
				continue
			}
			for _, m := range marks {
				if m != "" && (strings.Contains(p.cmdline, m) || strings.HasPrefix(p.cwd, m)) {
					left = append(left, p)
					break
				}
			}
		}
		return left
	}
	// Plugins of a killed daemon die of their parent-death signal: give
	// them a moment.
	deadline := time.Now().Add(5 * time.Second)
	left := find()
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		left = find()
	}
	for _, p := range left {
		h.violate("orphan process %d (parent %d, state %c) left after the daemons stopped: %q in %s", p.pid, p.ppid, p.state, p.cmdline, p.cwd)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// The checker itself: a clean run of three jobs, then one fault of each
// kind planted by hand; every one must be reported.
func TestHistoryCheckerCatches(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
	ids := c.enqueue("slow", plugin, writeInputs(t, filepath.Join(c.dir, "in"), 4, func(int) string { return "0 4" }))
	c.startSentinel()
	w, _ := c.startWorker("w1", c.tcp)
	c.waitDone(int64(len(ids)), 2*time.Minute)

	db, err := sql.Open("sqlite", c.db+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	polls := func() int { c.hist.mu.Lock(); defer c.hist.mu.Unlock(); return c.hist.polls }
	n := polls()
	waitFor(t, 10*time.Second, "a poll", func() bool { return polls() > n+1 })
	// A terminal job goes back, its attempt down: seen by the poller.
	exec(`UPDATE cf_processing_queue SET status = 'QUEUED', attempt = 0, next_attempt_at = '2999-01-01T00:00:00.000000000Z' WHERE id = ?`, ids[0])
	n = polls()
	waitFor(t, 10*time.Second, "a poll", func() bool { return polls() > n+1 })
	// A receipt that disagrees with its file.
	exec(`UPDATE cf_processing_queue SET result_json = replace(result_json, '"rows":"4"', '"rows":"5"') WHERE id = ?`, ids[1])
	// The same output committed twice, and a temporary file.
	var first string
	_ = filepath.WalkDir(c.out, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && first == "" && strings.HasSuffix(p, fmt.Sprintf("_%d.parquet", ids[2])) {
			first = p
		}
		return nil
	})
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string][]byte{filepath.Join(c.out, "dup", filepath.Base(first)): b,
		filepath.Join(c.out, ".slow_output.parquet.tmp-9-abc"): []byte("PAR1")} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A panic in a daemon's output, and a COMPLETED accepted twice.
	fmt.Fprintf(w.out, "panic: planted\n")
	fmt.Fprintf(c.sentinel.out, "time=%s level=INFO msg=\"job completed\" job_id=%d worker=w9 attempt=1 status=COMPLETED\n",
		time.Now().Format(time.RFC3339Nano), ids[3])
	// A process left in the test's directory.
	orphan := osexec.Command("sleep", "300")
	orphan.Dir = c.dir
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	go orphan.Wait()

	vs := c.verifyHistory(expect{failed: map[int64]string{ids[3]: ""}, rows: constRows(4)})
	all := strings.Join(vs, "\n")
	t.Logf("violations:\n%s", all)
	for _, want := range []string{
		fmt.Sprintf("[Job %d] attempt went down", ids[0]),
		fmt.Sprintf("[Job %d] left its terminal state", ids[0]),
		fmt.Sprintf("[Job %d] is QUEUED", ids[0]),
		fmt.Sprintf("[Job %d] has output files but is QUEUED", ids[0]),
		fmt.Sprintf("[Job %d] topic output: the receipt says 5 rows, the file holds 4", ids[1]),
		fmt.Sprintf("[Job %d] receipt metrics say 4 rows, its artifacts 5", ids[1]),
		fmt.Sprintf("[Job %d] topic output committed 2 times", ids[2]),
		"temporary or stray file " + filepath.Join(c.out, ".slow_output.parquet.tmp-9-abc"),
		"w1: panic: planted",
		fmt.Sprintf("[Job %d] COMPLETED 2 times", ids[3]),
		fmt.Sprintf("[Job %d] is COMPLETED", ids[3]),
		"orphan process " + strconv.Itoa(orphan.Process.Pid),
	} {
		if !strings.Contains(all, want) {
			t.Errorf("the checker missed: %s", want)
		}
	}
}
