package sentinel

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

func TestDispatchPayload(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	src := e.plugin("csv_parser")
	if err := e.st.AddSink(e.ctx, "csv_parser", store.Sink{Topic: "errors", URI: "sqlite:///tmp/errors.db",
		Mode: "replace", SchemaJSON: `{"fields":[]}`}); err != nil {
		t.Fatal(err)
	}
	fv := e.file("in/data.csv", "x,y\n1,2\n")
	id := e.jobWith(fv, "csv_parser", 0, "")

	w := e.worker(workerOpts{ID: "w1", Caps: []string{"csv_parser"}, Slots: 1,
		Exts: []string{protocol.ExtAttempt, protocol.ExtSlots}})
	got, d := w.dispatch()
	if got != id {
		t.Fatalf("DISPATCH job %d, want %d", got, id)
	}
	if d.PluginName != "csv_parser" {
		t.Errorf("plugin_name = %q", d.PluginName)
	}
	wantPath := filepath.Join(e.root, "in", "data.csv")
	if d.FilePath != wantPath || !filepath.IsAbs(d.FilePath) {
		t.Errorf("file_path = %q, want absolute %q", d.FilePath, wantPath)
	}
	if d.SourceCode != src {
		t.Errorf("source_code = %q, want %q", d.SourceCode, src)
	}
	if d.EnvHash != "system" {
		t.Errorf("env_hash = %q, want system", d.EnvHash)
	}
	if d.FileVersionID != fv {
		t.Errorf("file_version_id = %d, want %d", d.FileVersionID, fv)
	}
	if d.Attempt < 1 {
		t.Errorf("attempt = %d, want >= 1", d.Attempt)
	}
	wantSinks := []protocol.SinkConfig{
		{Topic: "errors", URI: "sqlite:///tmp/errors.db", Mode: "replace", SchemaDef: `{"fields":[]}`},
		{Topic: "output", URI: "parquet://csv_parser_output.parquet", Mode: "append"},
	}
	if !slices.Equal(d.Sinks, wantSinks) {
		t.Errorf("sinks = %+v, want %+v", d.Sinks, wantSinks)
	}

	j := e.get(id)
	if j.Status != store.StatusRunning || j.LeaseOwner != "w1" || j.Attempt != d.Attempt {
		t.Errorf("job after DISPATCH: status %s owner %q attempt %d; want RUNNING w1 %d", j.Status, j.LeaseOwner, j.Attempt, d.Attempt)
	}
	e.waitMetric("jobs_dispatched_total", e.s.Metrics().JobsDispatched, 1)
	e.waitMetric("dispatch latency observations", e.s.Metrics().DispatchLatency, 1)
}

func TestSlotsAreFilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	var ids []int64
	for range 5 {
		ids = append(ids, e.job("p"))
	}
	w := e.worker(workerOpts{ID: "multi", Caps: []string{"p"}, Slots: 3, Exts: []string{protocol.ExtSlots, protocol.ExtAttempt}})
	var got []int64
	for range 3 {
		id, _ := w.dispatch()
		got = append(got, id)
	}
	w.expectNone(protocol.OpDispatch, quiet)
	slices.Sort(got)
	if !slices.Equal(got, ids[:3]) {
		t.Fatalf("dispatched %v, want the first three jobs %v", got, ids[:3])
	}
	if c := e.counts(); c[store.StatusRunning] != 3 || c[store.StatusQueued] != 2 {
		t.Fatalf("counts %v, want 3 RUNNING and 2 QUEUED", c)
	}
	if info, _ := e.info("multi"); info.Slots != 3 || len(info.Jobs) != 3 {
		t.Fatalf("worker info %+v, want 3 slots, 3 jobs", info)
	}
	if got := val(t, e.s.Metrics().BusySlots); got != 3 {
		t.Errorf("busy slots gauge = %v, want 3", got)
	}
	if got := val(t, e.s.Metrics().Slots); got != 3 {
		t.Errorf("slots gauge = %v, want 3", got)
	}

	// Each conclusion frees one slot, which is refilled at once.
	w.conclude(got[0], protocol.JobReceipt{Status: protocol.StatusSuccess})
	id4, _ := w.dispatch()
	if id4 != ids[3] {
		t.Fatalf("after a conclusion got job %d, want %d", id4, ids[3])
	}
	w.expectNone(protocol.OpDispatch, quiet)
}

func TestSlotlessWorkerGetsOneJobAtATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	a, b := e.job("p"), e.job("p")
	// A plain v4 IDENTIFY: no slots, no extensions.
	w := e.worker(workerOpts{ID: "v4", Caps: []string{"p"}})
	id, d := w.dispatch()
	if id != a {
		t.Fatalf("first DISPATCH is job %d, want %d", id, a)
	}
	w.expectNone(protocol.OpDispatch, quiet)
	if j := e.get(b); j.Status != store.StatusQueued {
		t.Fatalf("job %d is %s while the worker is busy, want QUEUED", b, j.Status)
	}
	// A plain v4 CONCLUDE does not echo the attempt.
	w.conclude(a, protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: -1})
	e.waitStatus(a, store.StatusCompleted)
	id, _ = w.dispatch()
	if id != b {
		t.Fatalf("second DISPATCH is job %d, want %d", id, b)
	}
	_ = d
}

func TestJobsSpreadOverWorkers(t *testing.T) {
	t.Parallel()
	// No periodic dispatch passes: the only pass is the Wake below.
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.PollInterval, c.CleanupInterval = time.Hour, time.Hour }})
	e.plugin("p")
	w1 := e.worker(workerOpts{ID: "w1", Caps: []string{"*"}, Slots: 2})
	w2 := e.worker(workerOpts{ID: "w2", Caps: []string{"*"}, Slots: 2})
	e.waitRegistered("w1", "w2")
	for range 2 {
		if _, err := e.st.Enqueue(e.ctx, e.defaultFile(), "p", 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.s.Wake()
	// One pass gives each worker one job instead of filling the first.
	w1.dispatch()
	w2.dispatch()
	w1.expectNone(protocol.OpDispatch, quiet)
	w2.expectNone(protocol.OpDispatch, 0)
}

func TestCapabilityFilteringNoHeadOfLineBlocking(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("x")
	e.plugin("y")
	jx := e.jobWith(e.defaultFile(), "x", 10, "") // higher priority, but nobody runs x
	jy := e.job("y")

	none := e.worker(workerOpts{ID: "nocaps", Slots: 4})
	wy := e.worker(workerOpts{ID: "wy", Caps: []string{"y"}, Slots: 4})
	id, d := wy.dispatch()
	if id != jy || d.PluginName != "y" {
		t.Fatalf("worker y got job %d (%s), want %d (y)", id, d.PluginName, jy)
	}
	wy.expectNone(protocol.OpDispatch, quiet)
	none.expectNone(protocol.OpDispatch, 0)
	if j := e.get(jx); j.Status != store.StatusQueued || j.Attempt != 0 {
		t.Fatalf("job for x is %s at attempt %d, want QUEUED never claimed", j.Status, j.Attempt)
	}
	// Later jobs for y keep flowing past the stuck x job.
	jy2 := e.job("y")
	if id, _ := wy.dispatch(); id != jy2 {
		t.Fatalf("worker y got job %d, want %d", id, jy2)
	}
	// A worker that can run x takes it.
	wx := e.worker(workerOpts{ID: "wx", Caps: []string{"x"}})
	if id, _ := wx.dispatch(); id != jx {
		t.Fatalf("worker x got job %d, want %d", id, jx)
	}
}

func TestUndispatchableJobsFail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("ok")
	noManifest := e.job("ghost")
	escaping := e.jobWith(e.file("sub/evil.csv", "1\n"), "ok", 0, "")
	missing := e.jobWith(987654, "ok", 0, "")
	good := e.job("ok")

	// Make the location of the escaping job point outside its root, as a
	// database edited by hand (or by the original system) could.
	db := e.db()
	if _, err := db.Exec(`UPDATE cf_file_location SET rel_path = '../../../etc/passwd' WHERE rel_path = 'sub/evil.csv'`); err != nil {
		t.Fatal(err)
	}

	w := e.worker(workerOpts{ID: "w", Caps: []string{"*"}, Slots: 1})
	// The good job is dispatched although three undispatchable ones come
	// first: each is failed on the spot, none holds the worker's slot.
	id, _ := w.dispatch()
	if id != good {
		t.Fatalf("got job %d, want the dispatchable job %d", id, good)
	}
	w.expectNone(protocol.OpDispatch, quiet)

	for _, c := range []struct {
		id   int64
		want []string
	}{
		{noManifest, []string{"cannot dispatch", "no active manifest", `"ghost"`, "deploy"}},
		{escaping, []string{"cannot dispatch", "escapes"}},
		{missing, []string{"cannot dispatch", "file location missing"}},
	} {
		j := e.waitStatus(c.id, store.StatusFailed)
		for _, s := range c.want {
			if !strings.Contains(j.ErrorMessage, s) {
				t.Errorf("job %d error %q lacks %q", c.id, j.ErrorMessage, s)
			}
		}
		// (lease_owner is kept as a record of the last owner; the lease
		// itself is gone.)
		if !j.LeaseExpiresAt.IsZero() || j.EndTime.IsZero() {
			t.Errorf("failed job %d: lease until %v, end time %v; want no lease and an end time", c.id, j.LeaseExpiresAt, j.EndTime)
		}
	}
	e.sync()
	if got := val(t, e.s.Metrics().JobsFailed); got != 3 {
		t.Errorf("jobs_failed_total = %v, want 3", got)
	}
	if got := val(t, e.s.Metrics().JobsDispatched); got != 1 {
		t.Errorf("jobs_dispatched_total = %v, want 1", got)
	}
	if c := e.counts(); c[store.StatusRunning] != 1 {
		t.Errorf("counts %v, want exactly the good job RUNNING", c)
	}
}

func TestConfigOverrides(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	if err := e.st.AddSink(e.ctx, "p", store.Sink{Topic: "rejects", URI: "parquet://rejects.parquet", SchemaJSON: "S"}); err != nil {
		t.Fatal(err)
	}
	fv := e.defaultFile()
	cases := []struct {
		name, overrides string
		want            []protocol.SinkConfig // nil: the job must fail
		errHas          string
	}{
		{"none", "", []protocol.SinkConfig{
			{Topic: "rejects", URI: "parquet://rejects.parquet", Mode: "append", SchemaDef: "S"},
			{Topic: "output", URI: "parquet://p_output.parquet", Mode: "append"},
		}, ""},
		{"sinks string", `{"sinks":{"output":"parquet://custom"}}`, []protocol.SinkConfig{
			{Topic: "rejects", URI: "parquet://rejects.parquet", Mode: "append", SchemaDef: "S"},
			{Topic: "output", URI: "parquet://custom", Mode: "append"},
		}, ""},
		{"object keeps schema", `{"sinks":{"rejects":{"uri":"sqlite:///r.db","mode":"replace"}}}`, []protocol.SinkConfig{
			{Topic: "rejects", URI: "sqlite:///r.db", Mode: "replace", SchemaDef: "S"},
			{Topic: "output", URI: "parquet://p_output.parquet", Mode: "append"},
		}, ""},
		{"bare map adds topic", `{"extra":"parquet://extra.parquet"}`, []protocol.SinkConfig{
			{Topic: "rejects", URI: "parquet://rejects.parquet", Mode: "append", SchemaDef: "S"},
			{Topic: "output", URI: "parquet://p_output.parquet", Mode: "append"},
			{Topic: "extra", URI: "parquet://extra.parquet", Mode: "append"},
		}, ""},
		{"not an object", `[1,2]`, nil, "config_overrides is not a JSON object"},
		{"sinks not an object", `{"sinks":"parquet://x"}`, nil, `"sinks" is not a JSON object`},
		{"bad topic value", `{"sinks":{"output":42}}`, nil, `topic "output"`},
		{"object without uri", `{"sinks":{"output":{"mode":"append"}}}`, nil, `topic "output"`},
	}
	ids := map[int64]int{}
	for i, c := range cases {
		ids[e.jobWith(fv, "p", 0, c.overrides)] = i
	}
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Slots: len(cases)})
	good := 0
	for _, c := range cases {
		if c.want != nil {
			good++
		}
	}
	for range good {
		id, d := w.dispatch()
		c := cases[ids[id]]
		if c.want == nil {
			t.Errorf("%s: job %d was dispatched, want it failed", c.name, id)
			continue
		}
		if !slices.Equal(d.Sinks, c.want) {
			t.Errorf("%s: sinks %+v, want %+v", c.name, d.Sinks, c.want)
		}
	}
	w.expectNone(protocol.OpDispatch, quiet)
	for id, i := range ids {
		c := cases[i]
		if c.want != nil {
			continue
		}
		j := e.waitStatus(id, store.StatusFailed)
		if !strings.Contains(j.ErrorMessage, c.errHas) || !strings.Contains(j.ErrorMessage, "cannot dispatch") {
			t.Errorf("%s: error %q, want it to contain %q", c.name, j.ErrorMessage, c.errHas)
		}
	}
}

func TestApplyOverridesUnit(t *testing.T) {
	t.Parallel()
	base := []store.Sink{{Topic: "output", URI: "parquet://o", Mode: "append", SchemaJSON: "S"}}
	for _, ov := range []string{"", "{}", "null", `{"sinks":null}`, `{"sinks":{}}`} {
		got, err := applyOverrides(base, ov)
		if err != nil || !slices.Equal(got, base) {
			t.Errorf("applyOverrides(%q) = %v, %v; want the sinks unchanged", ov, got, err)
		}
	}
	got, err := applyOverrides(base, `{"sinks":{"output":{"uri":"u","mode":"error"}}}`)
	if err != nil || !slices.Equal(got, []store.Sink{{Topic: "output", URI: "u", Mode: "error", SchemaJSON: "S"}}) {
		t.Errorf("object override: %v, %v", got, err)
	}
	if base[0].URI != "parquet://o" {
		t.Error("applyOverrides modified its input")
	}
	if _, err := applyOverrides(base, `{"sinks":{"output":"u"}`); err == nil {
		t.Error("truncated JSON accepted")
	}
}

func TestDispatchOverIPCAndTCP(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "s.sock")
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.Bind = []string{"tcp://127.0.0.1:0", "ipc://" + sock}
	}})
	tcp := e.ep("tcp")
	if strings.HasSuffix(tcp, ":0") {
		t.Fatalf("Endpoints() reports %s, want the real port", tcp)
	}
	if ipc := e.ep("ipc"); ipc != "ipc://"+sock {
		t.Fatalf("ipc endpoint %s", ipc)
	}
	e.plugin("p")
	wi := e.worker(workerOpts{ID: "over-ipc", Caps: []string{"p"}, Endpoint: "ipc://" + sock})
	wt := e.worker(workerOpts{ID: "over-tcp", Caps: []string{"p"}, Endpoint: tcp})
	e.waitRegistered("over-ipc", "over-tcp")
	a, b := e.job("p"), e.job("p")
	ia, _ := wi.dispatch()
	it, _ := wt.dispatch()
	if !(ia == a && it == b || ia == b && it == a) {
		t.Fatalf("ipc worker got %d, tcp worker %d; want jobs %d and %d", ia, it, a, b)
	}
	wi.conclude(ia, protocol.JobReceipt{Status: protocol.StatusSuccess})
	wt.conclude(it, protocol.JobReceipt{Status: protocol.StatusSuccess})
	e.waitStatus(a, store.StatusCompleted)
	e.waitStatus(b, store.StatusCompleted)
	info, _ := e.info("over-ipc")
	if info.Endpoint != "ipc://"+sock {
		t.Errorf("worker endpoint %q", info.Endpoint)
	}
}

func TestIPCSocketInUseAndStale(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "s.sock")
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Bind = []string{"ipc://" + sock} }})

	// A second sentinel on the same live socket refuses to start.
	st2, err := store.Open(e.ctx, filepath.Join(t.TempDir(), "other.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	s2, err := New(Config{Store: st2, Bind: []string{"ipc://" + sock}})
	if err != nil {
		t.Fatal(err)
	}
	err = s2.Run(e.ctx)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second sentinel on a live socket: Run = %v, want an in-use error", err)
	}

	// Once the first one stops, a new one binds, even over a socket file
	// left behind by a killed sentinel.
	e.stop()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("no leftover socket file: %v", err)
	}
	e2 := newEnv(t, envOpt{dbPath: filepath.Join(t.TempDir(), "third.db"),
		cfg: func(c *Config) { c.Bind = []string{"ipc://" + sock} }})
	e2.plugin("p")
	w := e2.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	id := e2.job("p")
	if got, _ := w.dispatch(); got != id {
		t.Fatalf("got job %d, want %d", got, id)
	}
}

// shortTempDir is a temp dir with a path short enough for unix sockets.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if len(dir)+len("/s.sock") > 100 {
		t.Skipf("temp dir %s too long for a unix socket", dir)
	}
	return dir
}

func TestNewRequiresStore(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a store succeeded")
	}
}

func TestPriorityOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	fv := e.defaultFile()
	low := e.jobWith(fv, "p", 0, "")
	high := e.jobWith(fv, "p", 5, "")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	if id, _ := w.dispatch(); id != high {
		t.Fatalf("first DISPATCH is job %d, want the high-priority job %d", id, high)
	}
	w.conclude(high, protocol.JobReceipt{Status: protocol.StatusSuccess})
	if id, _ := w.dispatch(); id != low {
		t.Fatalf("second DISPATCH is job %d, want %d", id, low)
	}
}

// A database error while building a DISPATCH is not the job's fault: the job
// is retried, not failed for good.
func TestTransientDispatchErrorRetries(t *testing.T) {
	t.Parallel()
	so := testStoreOptions()
	so.BackoffBase, so.BackoffMax, so.MaxRetries = 100*time.Millisecond, 200*time.Millisecond, 1000
	e := newEnv(t, envOpt{store: &so, cfg: func(c *Config) { c.CleanupInterval, c.PollInterval = 200*time.Millisecond, 200*time.Millisecond }})
	e.plugin("p")
	fv := e.defaultFile()
	db := e.db()
	if _, err := db.Exec(`ALTER TABLE cf_file_version RENAME TO cf_file_version_away`); err != nil {
		t.Fatal(err)
	}
	id := e.jobWith(fv, "p", 0, "")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	eventually(t, waitFor, func() (bool, string) {
		j := e.get(id)
		return j.RetryCount >= 1, fmt.Sprintf("job %s retries %d error %q", j.Status, j.RetryCount, j.ErrorMessage)
	})
	if j := e.get(id); j.Status == store.StatusFailed {
		t.Fatalf("job failed for good on a database error: %q", j.ErrorMessage)
	} else if !strings.Contains(j.LastError, "cannot dispatch") {
		t.Errorf("last error %q", j.LastError)
	}
	if got := val(t, e.s.Metrics().DBErrors); got < 1 {
		t.Errorf("db_errors_total = %v", got)
	}
	// The sentinel keeps retrying (and writing): retry the rename until it
	// gets the write lock.
	eventually(t, waitFor, func() (bool, string) {
		_, err := db.Exec(`ALTER TABLE cf_file_version_away RENAME TO cf_file_version`)
		return err == nil, fmt.Sprint(err)
	})
	m, ok := w.tryExpect(protocol.OpDispatch, id, waitFor)
	if j := e.get(id); !ok || j.Status != store.StatusRunning {
		t.Fatalf("after the table is back: DISPATCH received %v (%s), job %s retries %d error %q last error %q",
			ok, m.Payload, j.Status, j.RetryCount, j.ErrorMessage, j.LastError)
	}
}
