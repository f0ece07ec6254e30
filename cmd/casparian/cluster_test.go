package main_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"

	_ "modernc.org/sqlite"
)

// The cluster tests run the real daemons as OS processes: a sentinel, workers
// over tcp:// and ipc://, a real SQLite file and the real Python guest.

// proc is a daemon started by a test.
type proc struct {
	name    string
	cmd     *exec.Cmd
	out     *lockedBuffer
	done    chan struct{}
	started time.Time // just before the process was started
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startProcEnv(t, name, nil, args...)
}

// startProcEnv is startProc with extra environment variables.
func startProcEnv(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(buildCLI(t), args...)
	p.cmd.Dir = testenv.RepoRoot()
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(append(os.Environ(), "CASPARIAN_LOG=debug"), env...)
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, tail(p.out.String(), 120))
		}
	})
	return p
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("%s did not exit within %s", p.name, d)
		return -1
	}
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape reads a /metrics page into "name{labels}" → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// cluster is a sentinel with its database, inputs and output directory.
type cluster struct {
	t        *testing.T
	dir      string
	db       string
	out      string
	tcp      string // tcp://127.0.0.1:PORT
	ipc      string // ipc:///…/sentinel.sock
	metrics  string // sentinel metrics HOST:PORT
	sentinel *proc
	st       *store.Store
	py       string
	rdb      *sql.DB
	sockDir  string // short temporary dir: sockets, the workers' TMPDIR
	hist     *history

	mu    sync.Mutex
	procs []*proc // every daemon started, in order
}

// allProcs lists every daemon the cluster started.
func (c *cluster) allProcs() []*proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*proc(nil), c.procs...)
}

func (c *cluster) addProc(p *proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
}

// sql is a read-only connection to the queue, for columns Job does not carry.
func (c *cluster) sql() *sql.DB {
	if c.rdb == nil {
		db, err := sql.Open("sqlite", c.db+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { db.Close() })
		c.rdb = db
	}
	return c.rdb
}

func newCluster(t *testing.T) *cluster {
	dir := t.TempDir()
	// Unix socket paths are limited to 107 bytes; t.TempDir can be long.
	sockDir, err := os.MkdirTemp("", "cf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	c := &cluster{t: t, dir: dir, db: filepath.Join(dir, "queue.db"), out: filepath.Join(dir, "out"),
		tcp: "tcp://" + freeAddr(t), ipc: "ipc://" + filepath.Join(sockDir, "s.sock"), metrics: freeAddr(t),
		py: testenv.Python(t), sockDir: sockDir}
	st, err := store.Open(context.Background(), c.db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c.st = st
	return c
}

// startSentinel starts (or restarts) the sentinel on both endpoints.
func (c *cluster) startSentinel(extra ...string) {
	args := append([]string{"sentinel", "--bind", c.tcp, "--bind", c.ipc, "--database", c.db,
		"--metrics-addr", c.metrics, "--cleanup-interval", "500ms", "--probe-interval", "1s", "--poll-interval", "100ms"}, extra...)
	c.sentinel = startProc(c.t, "sentinel", args...)
	c.addProc(c.sentinel)
	waitFor(c.t, 20*time.Second, "the sentinel to listen", func() bool {
		return strings.Contains(c.sentinel.out.String(), "sentinel listening")
	})
}

// startWorker starts a worker connected to endpoint.
func (c *cluster) startWorker(name, endpoint string, extra ...string) (*proc, string) {
	return c.startWorkerEnv(name, endpoint, nil, extra...)
}

// startWorkerEnv is startWorker with extra environment variables.
func (c *cluster) startWorkerEnv(name, endpoint string, env []string, extra ...string) (*proc, string) {
	maddr := freeAddr(c.t)
	args := append([]string{"worker", "--connect", endpoint, "--output", c.out, "--worker-id", name,
		"--python", c.py, "--metrics-addr", maddr, "--heartbeat-interval", "1s", "--sentinel-timeout", "5s",
		"--envs-dir", filepath.Join(c.dir, "venvs-"+name)}, extra...)
	// A temporary dir of its own, so that every process it starts runs in
	// or names the cluster's directories (checkHistory looks for orphans).
	tmp := filepath.Join(c.sockDir, "tmp-"+name)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		c.t.Fatal(err)
	}
	p := startProcEnv(c.t, name, append([]string{"TMPDIR=" + tmp}, env...), args...)
	c.addProc(p)
	return p, maddr
}

// enqueue registers plugin and enqueues one job per input.
func (c *cluster) enqueue(plugin, pluginFile string, inputs []string) []int64 {
	c.t.Helper()
	ctx := context.Background()
	src, err := os.ReadFile(pluginFile)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.st.AddPlugin(ctx, store.PluginSpec{Name: plugin, SourceCode: string(src)}); err != nil {
		c.t.Fatal(err)
	}
	var ids []int64
	for _, in := range inputs {
		fv, err := c.st.AddFile(ctx, store.FileSpec{Root: filepath.Dir(in), RelPath: filepath.Base(in)})
		if err != nil {
			c.t.Fatal(err)
		}
		id, err := c.st.Enqueue(ctx, fv, plugin, 0, "")
		if err != nil {
			c.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func (c *cluster) counts() map[string]int64 {
	m, err := c.st.Counts(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	return m
}

func (c *cluster) job(id int64) *store.Job {
	j, err := c.st.Get(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return j
}

// waitDone waits until every job is COMPLETED and fails on any FAILED.
func (c *cluster) waitDone(n int64, d time.Duration) {
	c.t.Helper()
	waitFor(c.t, d, fmt.Sprintf("%d jobs COMPLETED", n), func() bool {
		m := c.counts()
		if m[store.StatusFailed] > 0 {
			jobs, _ := c.st.List(context.Background(), store.Filter{Statuses: []string{store.StatusFailed}, Limit: 3})
			for _, j := range jobs {
				c.t.Errorf("[Job %d] FAILED: %s", j.ID, j.ErrorMessage)
			}
			c.t.FailNow()
		}
		return m[store.StatusCompleted] == n
	})
}

// outputs lists the Parquet files in the output subdirectory sub ("" for
// the output root), failing on temporary leftovers.
func (c *cluster) outputs(sub string) []string {
	c.t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.out, sub))
	if err != nil {
		c.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".parquet") {
			c.t.Errorf("partial or stray file in %s/%s: %s", c.out, sub, e.Name())
			continue
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// expectOnePerJob checks that the output subdirectory sub ("" = the output
// root) has exactly one file per job id (names end in _<job id>.parquet).
func (c *cluster) expectOnePerJob(sub string, ids []int64) {
	topic := sub
	c.t.Helper()
	got := c.outputs(sub)
	per := map[int64]int{}
	for _, n := range got {
		base := strings.TrimSuffix(n, ".parquet")
		i := strings.LastIndexByte(base, '_')
		id, err := strconv.ParseInt(base[i+1:], 10, 64)
		if err != nil {
			c.t.Errorf("%s/%s: no job id in the name", topic, n)
			continue
		}
		per[id]++
	}
	for _, id := range ids {
		if per[id] != 1 {
			c.t.Errorf("topic %s: job %d has %d output files, want 1", topic, id, per[id])
		}
	}
	if len(got) != len(ids) {
		c.t.Errorf("topic %s: %d files for %d jobs", topic, len(got), len(ids))
	}
}

func writeInputs(t *testing.T, dir string, n int, content func(i int) string) []string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("in-%03d.txt", i))
		if err := os.WriteFile(p, []byte(content(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}
