package worker_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/worker"
)

func TestNewValidatesAndDefaults(t *testing.T) {
	if _, err := worker.New(worker.Config{}); err == nil || !strings.Contains(err.Error(), "Host is required") {
		t.Fatalf("New without a Host: %v", err)
	}
}

func TestIdentifyThenHeartbeats(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{cfg: func(c *worker.Config) {
		c.Slots = 3
		c.Capabilities = []string{"csv_parser", "json_parser"}
	}})
	r, id := s.identify()
	if r.m.JobID != 0 {
		t.Errorf("IDENTIFY job_id = %d, want 0", r.m.JobID)
	}
	if id.WorkerID != h.w.ID() || !strings.HasPrefix(id.WorkerID, "w-TestIdentify") {
		t.Errorf("worker_id = %q, want %q", id.WorkerID, h.w.ID())
	}
	if !slices.Equal(id.Capabilities, []string{"csv_parser", "json_parser"}) {
		t.Errorf("capabilities = %v", id.Capabilities)
	}
	if id.Slots != 3 {
		t.Errorf("slots = %d, want 3", id.Slots)
	}
	for _, ext := range []string{protocol.ExtAttempt, protocol.ExtSlots, protocol.ExtConcludeAck, protocol.ExtReidentify} {
		if !id.HasExtension(ext) {
			t.Errorf("protocol_extensions %v lacks %q", id.ProtocolExtensions, ext)
		}
	}
	hostname, _ := os.Hostname()
	if id.Hostname != hostname || id.PID != os.Getpid() {
		t.Errorf("hostname/pid = %q/%d, want %q/%d", id.Hostname, id.PID, hostname, os.Getpid())
	}
	// Periodic heartbeats from the same connection, idle with every slot free.
	var first time.Time
	for i := range 4 {
		hbMsg := s.wait(protocol.OpHeartbeat, 0, nil)
		if string(hbMsg.id) != string(r.id) {
			t.Fatalf("heartbeat from identity %q, IDENTIFY came from %q", hbMsg.id, r.id)
		}
		var hb protocol.HeartbeatPayload
		if err := hbMsg.m.Unmarshal(&hb); err != nil {
			t.Fatal(err)
		}
		if hb.Status != protocol.WorkerIdle || hb.FreeSlots != 3 || hb.Slots != 3 || len(hb.ActiveJobIDs) != 0 ||
			hb.ActiveJobCount != 0 || hb.CurrentJobID != nil {
			t.Errorf("heartbeat %d = %s", i, hbMsg.m.Payload)
		}
		if i == 0 {
			first = hbMsg.at
		}
		if i == 3 && hbMsg.at.Sub(first) < 200*time.Millisecond {
			t.Errorf("4 heartbeats within %s at a 100ms interval", hbMsg.at.Sub(first))
		}
	}
	m := h.w.Metrics()
	wantMetric(t, "connected", m.Connected, 1)
	wantMetric(t, "slots", m.Slots, 3)
	wantMetric(t, "reconnects_total", m.Reconnects, 0)
	eventually(t, "messages_sent_total ≥ 5", func() bool { return value(m.MessagesSent) >= 5 })
}

// A header-only HEARTBEAT from the sentinel is a probe: the worker answers
// with its status at once, not at its next tick.
func TestProbeGetsImmediateStatus(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{cfg: func(c *worker.Config) { c.HeartbeatInterval = time.Hour }})
	r, _ := s.identify()
	s.heartbeat("after IDENTIFY", nil) // identify sends one status at once
	for i := range 3 {
		sent := time.Now()
		s.send(r.id, protocol.OpHeartbeat, 0, nil)
		hb := s.heartbeat("answering a probe", nil)
		if hb.Status != protocol.WorkerIdle || hb.FreeSlots != 2 || hb.Slots != 2 {
			t.Errorf("probe answer %d: %+v", i, hb)
		}
		if d := time.Since(sent); d > 10*time.Second {
			t.Errorf("probe answered after %s", d)
		}
	}
	eventually(t, "messages_received_total = 3", func() bool { return value(h.w.Metrics().MessagesReceived) == 3 })
}

// A successful job: CONCLUDE SUCCESS with the attempt, rows and artifacts,
// and the Parquet file in place (test runtime; the Python version is in
// python_test.go).
func TestJobSuccessReceipt(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 41, 7, "emitter", "emit:5")
	_, rc := s.conclude(41)
	if rc.Status != protocol.StatusSuccess || rc.Attempt != 7 || rc.ErrorMessage != "" || rc.Requeue {
		t.Fatalf("receipt %+v", rc)
	}
	if rc.Metrics["rows"] != 5 {
		t.Errorf("metrics %v, want rows 5", rc.Metrics)
	}
	if len(rc.Artifacts) != 1 {
		t.Fatalf("artifacts %v", rc.Artifacts)
	}
	a := rc.Artifacts[0]
	want := filepath.Join(h.out, "out", "input_41.parquet")
	if a["topic"] != "out" || a["uri"] != "parquet://"+want || a["rows"] != "5" {
		t.Errorf("artifact %v, want topic out, uri parquet://%s, rows 5", a, want)
	}
	if n := parquetRows(t, want); n != 5 {
		t.Errorf("%s holds %d rows, want 5", want, n)
	}
	m := h.w.Metrics()
	eventually(t, "pending_conclusions back to 0 after the ACK", func() bool { return value(m.PendingConclusions) == 0 })
	wantMetric(t, "jobs_received_total", m.JobsReceived, 1)
	wantMetric(t, "jobs_completed_total", m.JobsCompleted, 1)
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 0)
	wantMetric(t, "bridge_executions_total", m.BridgeExecutions, 1)
	wantMetric(t, "parquet_files_written_total", m.ParquetFiles, 1)
	wantMetric(t, "parquet_rows_written_total", m.ParquetRows, 5)
	wantMetric(t, "busy_slots", m.BusySlots, 0)
	wantMetric(t, "job_duration_seconds (count)", m.JobDuration, 1)
}

func parquetRows(t *testing.T, path string) int64 {
	t.Helper()
	rdr, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer rdr.Close()
	return rdr.NumRows()
}

// Slots=2: two jobs run at once, a third DISPATCH is REJECTED at once with
// its attempt; heartbeats report BUSY, then ALIVE with one free slot.
func TestSlotsRejectWhenFull(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 1, 1, "blocker", "block")
	h.dispatch(r.id, 2, 1, "blocker", "block")
	h.rt.waitStarted(t, 1)
	h.rt.waitStarted(t, 2)
	hb := s.heartbeat("BUSY", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerBusy })
	if !slices.Equal(hb.ActiveJobIDs, []int64{1, 2}) || hb.ActiveJobCount != 2 || hb.FreeSlots != 0 ||
		hb.CurrentJobID == nil || *hb.CurrentJobID != 1 {
		t.Errorf("busy heartbeat %+v", hb)
	}
	if got := h.rt.max(); got != 2 {
		t.Errorf("%d jobs ran at once, want 2", got)
	}

	sent := time.Now()
	h.dispatch(r.id, 3, 9, "blocker", "block")
	_, rc := s.conclude(3)
	if rc.Status != protocol.StatusRejected || rc.Attempt != 9 || !strings.Contains(rc.ErrorMessage, "[Job 3]") ||
		!strings.Contains(rc.ErrorMessage, "no free slot") {
		t.Errorf("third job: %+v", rc)
	}
	if d := time.Since(sent); d > 10*time.Second {
		t.Errorf("REJECTED took %s", d)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_rejected_total", m.JobsRejected, 1)
	wantMetric(t, "busy_slots", m.BusySlots, 2)
	wantMetric(t, "jobs_received_total", m.JobsReceived, 3)
	wantMetric(t, "bridge_executions_total", m.BridgeExecutions, 2)

	// Abort one: the slot frees up.
	s.send(r.id, protocol.OpAbort, 1, nil)
	_, rc = s.conclude(1)
	if rc.Status != protocol.StatusAborted || rc.Requeue || rc.Attempt != 1 {
		t.Errorf("aborted job: %+v", rc)
	}
	hb = s.heartbeat("ALIVE", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerAlive })
	if !slices.Equal(hb.ActiveJobIDs, []int64{2}) || hb.FreeSlots != 1 || hb.Slots != 2 {
		t.Errorf("heartbeat with one job: %+v", hb)
	}
	// The free slot takes a new job.
	h.dispatch(r.id, 4, 1, "emitter", "emit:1")
	if _, rc = s.conclude(4); rc.Status != protocol.StatusSuccess {
		t.Errorf("job in the freed slot: %+v", rc)
	}
	if got := h.rt.max(); got != 2 {
		t.Errorf("%d jobs ran at once, want at most 2", got)
	}
	s.send(r.id, protocol.OpAbort, 2, nil)
	if _, rc = s.conclude(2); rc.Status != protocol.StatusAborted {
		t.Errorf("job 2: %+v", rc)
	}
}

// A repeated DISPATCH of a running job with the same attempt is ignored; one
// with a new attempt stops the old run (its CONCLUDE carries the old
// attempt) and runs the new one.
func TestRedispatchOfRunningJob(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{cfg: func(c *worker.Config) { c.Slots = 3 }})
	r, _ := s.identify()
	h.dispatch(r.id, 8, 1, "gated", "gate:a")
	h.rt.waitStarted(t, 8)
	h.dispatch(r.id, 8, 1, "gated", "gate:a") // duplicate
	s.send(r.id, protocol.OpHeartbeat, 0, nil)
	hb := s.heartbeat("after the duplicate", nil)
	for hb.ActiveJobCount == 0 { // skip any heartbeat sent before the job started
		hb = s.heartbeat("after the duplicate", nil)
	}
	if !slices.Equal(hb.ActiveJobIDs, []int64{8}) {
		t.Errorf("heartbeat %+v, want job 8 only", hb)
	}
	if n := s.countOp(protocol.OpConclude, 8); n != 0 {
		t.Errorf("the duplicate DISPATCH produced %d CONCLUDEs", n)
	}

	h.dispatch(r.id, 8, 2, "gated", "gate:b")
	_, old := s.conclude(8)
	if old.Status != protocol.StatusAborted || old.Attempt != 1 {
		t.Errorf("the superseded attempt concluded %+v, want ABORTED attempt 1", old)
	}
	h.rt.waitStarts(t, 8, 2) // attempt 2
	h.rt.open("b")
	_, rc := s.conclude(8)
	if rc.Status != protocol.StatusSuccess || rc.Attempt != 2 || rc.Metrics["rows"] != 2 {
		t.Errorf("attempt 2 concluded %+v", rc)
	}
	wantMetric(t, "jobs_received_total", h.w.Metrics().JobsReceived, 3)
}

// ABORT of a running job cancels it: CONCLUDE ABORTED, requeue false. An
// ABORT for a job the worker does not run is ignored.
func TestAbort(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	s.send(r.id, protocol.OpAbort, 999, nil)
	h.dispatch(r.id, 5, 3, "blocker", "block")
	h.rt.waitStarted(t, 5)
	s.send(r.id, protocol.OpAbort, 5, nil)
	s.send(r.id, protocol.OpAbort, 5, nil) // a second ABORT changes nothing
	_, rc := s.conclude(5)
	if rc.Status != protocol.StatusAborted || rc.Requeue || rc.Attempt != 3 ||
		!strings.HasPrefix(rc.ErrorMessage, "[Job 5] CANCELLED") {
		t.Errorf("receipt %+v", rc)
	}
	// The worker is fine and idle; nothing answered the unknown ABORT.
	s.heartbeat("IDLE", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerIdle })
	if n := s.count(func(r *rmsg) bool { return r.m.JobID == 999 }); n != 0 {
		t.Errorf("%d messages about the unknown job 999", n)
	}
	if n := s.countOp(protocol.OpConclude, 5); n != 1 {
		t.Errorf("%d CONCLUDEs for job 5, want 1", n)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_aborted_total", m.JobsAborted, 1)
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 0)
	wantMetric(t, "busy_slots", m.BusySlots, 0)
}

// Drain: cancelling Run's context sends DRAINING, rejects new work, lets the
// running job finish and CONCLUDEs it, then Run returns.
func TestDrainFinishesRunningJob(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{cfg: func(c *worker.Config) { c.DrainTimeout = time.Minute }})
	r, _ := s.identify()
	h.dispatch(r.id, 1, 4, "gated", "gate:g")
	h.rt.waitStarted(t, 1)
	h.cancel()
	hb := s.heartbeat("DRAINING", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerDraining })
	if !slices.Equal(hb.ActiveJobIDs, []int64{1}) || hb.FreeSlots != 0 || hb.Slots != 2 {
		t.Errorf("draining heartbeat %+v", hb)
	}
	h.dispatch(r.id, 2, 1, "emitter", "emit:1")
	_, rc := s.conclude(2)
	if rc.Status != protocol.StatusRejected || rc.Attempt != 1 || !strings.Contains(rc.ErrorMessage, "shutting down") {
		t.Errorf("DISPATCH while draining: %+v", rc)
	}
	if h.runReturned() {
		t.Fatal("Run returned while a job was still running")
	}
	h.rt.open("g")
	_, rc = s.conclude(1)
	if rc.Status != protocol.StatusSuccess || rc.Attempt != 4 || rc.Metrics["rows"] != 2 {
		t.Errorf("drained job: %+v", rc)
	}
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_completed_total", m.JobsCompleted, 1)
	wantMetric(t, "jobs_rejected_total", m.JobsRejected, 1)
	wantMetric(t, "pending_conclusions", m.PendingConclusions, 0)
	wantMetric(t, "connected", m.Connected, 0)
}

// Drain past DrainTimeout: the job is aborted and handed back with
// requeue:true before Run returns.
func TestDrainTimeoutAbortsWithRequeue(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{cfg: func(c *worker.Config) { c.DrainTimeout = 300 * time.Millisecond }})
	r, _ := s.identify()
	h.dispatch(r.id, 6, 2, "blocker", "block")
	h.dispatch(r.id, 7, 5, "blocker", "block")
	h.rt.waitStarted(t, 6)
	h.rt.waitStarted(t, 7)
	start := time.Now()
	h.cancel()
	for _, id := range []int64{6, 7} {
		_, rc := s.conclude(id)
		if rc.Status != protocol.StatusAborted || !rc.Requeue || rc.Attempt != map[int64]int64{6: 2, 7: 5}[id] {
			t.Errorf("job %d: %+v", id, rc)
		}
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("jobs aborted %s after the drain began, before DrainTimeout", d)
	}
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
	wantMetric(t, "jobs_aborted_total", h.w.Metrics().JobsAborted, 2)
}

// Drain when the sentinel never ACKs the last CONCLUDE: Run still returns.
func TestDrainWithoutAckStillReturns(t *testing.T) {
	s := newSentinel(t)
	s.autoAck.Store(false)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 3, 1, "gated", "gate:g")
	h.rt.waitStarted(t, 3)
	h.cancel()
	s.heartbeat("DRAINING", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerDraining })
	h.rt.open("g")
	s.conclude(3)
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
	wantMetric(t, "pending_conclusions", h.w.Metrics().PendingConclusions, 1)
}

// Drain with no sentinel: Run returns without waiting for one.
func TestDrainWhileDisconnected(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 3, 1, "gated", "gate:g")
	h.rt.waitStarted(t, 3)
	s.close()
	eventually(t, "connected = 0", func() bool { return value(h.w.Metrics().Connected) == 0 })
	h.cancel()
	time.Sleep(100 * time.Millisecond)
	if h.runReturned() {
		t.Fatal("Run returned while a job was still running")
	}
	h.rt.open("g")
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
	wantMetric(t, "jobs_completed_total", h.w.Metrics().JobsCompleted, 1)
}

// A drain that begins during an outage: when the sentinel is back, the
// worker identifies, reports DRAINING, rejects new work, concludes its job
// there and then returns.
func TestDrainAcrossReconnect(t *testing.T) {
	s1 := newSentinel(t)
	h := startWorker(t, s1, options{cfg: func(c *worker.Config) { c.DrainTimeout = time.Minute }})
	r1, _ := s1.identify()
	h.dispatch(r1.id, 14, 2, "gated", "gate:g")
	h.rt.waitStarted(t, 14)
	s1.close()
	eventually(t, "connected = 0", func() bool { return value(h.w.Metrics().Connected) == 0 })
	h.cancel()
	s2 := newSentinelAt(t, s1.ep)
	h.s = s2
	r2, _ := s2.identify()
	hb := s2.heartbeat("DRAINING", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerDraining })
	if !slices.Equal(hb.ActiveJobIDs, []int64{14}) {
		t.Errorf("draining heartbeat %+v", hb)
	}
	h.dispatch(r2.id, 15, 1, "emitter", "emit:1")
	if _, rc := s2.conclude(15); rc.Status != protocol.StatusRejected {
		t.Errorf("DISPATCH while draining: %+v", rc)
	}
	if h.runReturned() {
		t.Fatal("Run returned with a job running")
	}
	h.rt.open("g")
	if _, rc := s2.conclude(14); rc.Status != protocol.StatusSuccess || rc.Attempt != 2 {
		t.Errorf("receipt %+v", rc)
	}
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
	wantMetric(t, "pending_conclusions", h.w.Metrics().PendingConclusions, 0)
}

// The sentinel goes away and comes back on the same endpoint: the worker
// reconnects, identifies again, reports the job that ran across the outage
// and delivers its CONCLUDE to the new sentinel.
func TestReconnectKeepsRunningJob(t *testing.T) {
	s1 := newSentinel(t)
	h := startWorker(t, s1, options{})
	r1, _ := s1.identify()
	h.dispatch(r1.id, 11, 3, "gated", "gate:g")
	h.rt.waitStarted(t, 11)
	s1.heartbeat("listing job 11", func(p protocol.HeartbeatPayload) bool { return slices.Equal(p.ActiveJobIDs, []int64{11}) })

	s1.close()
	m := h.w.Metrics()
	eventually(t, "connected = 0 during the outage", func() bool { return value(m.Connected) == 0 })
	time.Sleep(300 * time.Millisecond) // a few failed connection attempts
	s2 := newSentinelAt(t, s1.ep)
	h.s = s2
	r2, id := s2.identify()
	if string(r2.id) == string(r1.id) {
		t.Errorf("the new connection reuses routing identity %q", r1.id)
	}
	if id.WorkerID != h.w.ID() {
		t.Errorf("worker_id %q after reconnecting", id.WorkerID)
	}
	hb := s2.heartbeat("listing job 11", func(p protocol.HeartbeatPayload) bool { return len(p.ActiveJobIDs) > 0 })
	if !slices.Equal(hb.ActiveJobIDs, []int64{11}) || hb.Status != protocol.WorkerAlive || hb.FreeSlots != 1 {
		t.Errorf("heartbeat after reconnecting: %+v", hb)
	}
	eventually(t, "connected = 1", func() bool { return value(m.Connected) == 1 })
	wantMetric(t, "reconnects_total", m.Reconnects, 1)

	h.rt.open("g")
	r, rc := s2.conclude(11)
	if string(r.id) != string(r2.id) || rc.Status != protocol.StatusSuccess || rc.Attempt != 3 || rc.Metrics["rows"] != 2 {
		t.Errorf("CONCLUDE after reconnecting: %+v from %q", rc, r.id)
	}
	if n := s1.countOp(protocol.OpConclude, -1); n != 0 {
		t.Errorf("the old sentinel got %d CONCLUDEs", n)
	}
}

// The same over an ipc:// endpoint (a sentinel on the same machine).
func TestReconnectOverIPC(t *testing.T) {
	ep := "ipc://" + filepath.Join(shortTempDir(t), "sentinel.sock")
	s1 := newSentinelAt(t, ep)
	h := startWorker(t, s1, options{})
	r1, _ := s1.identify()
	h.dispatch(r1.id, 13, 1, "gated", "gate:g")
	h.rt.waitStarted(t, 13)
	s1.close()
	eventually(t, "connected = 0", func() bool { return value(h.w.Metrics().Connected) == 0 })
	s2 := newSentinelAt(t, ep)
	h.s = s2
	s2.identify()
	s2.heartbeat("listing job 13", func(p protocol.HeartbeatPayload) bool { return slices.Equal(p.ActiveJobIDs, []int64{13}) })
	h.rt.open("g")
	if _, rc := s2.conclude(13); rc.Status != protocol.StatusSuccess {
		t.Errorf("receipt %+v", rc)
	}
	wantMetric(t, "reconnects_total", h.w.Metrics().Reconnects, 1)
}

// A job that finishes during the outage is concluded once the worker is back.
func TestConcludeDuringOutageIsDelivered(t *testing.T) {
	s1 := newSentinel(t)
	h := startWorker(t, s1, options{})
	r1, _ := s1.identify()
	h.dispatch(r1.id, 12, 1, "gated", "gate:g")
	h.rt.waitStarted(t, 12)
	s1.close()
	eventually(t, "connected = 0", func() bool { return value(h.w.Metrics().Connected) == 0 })
	h.rt.open("g")
	eventually(t, "pending_conclusions = 1", func() bool { return value(h.w.Metrics().PendingConclusions) == 1 })
	s2 := newSentinelAt(t, s1.ep)
	h.s = s2
	s2.identify()
	if _, rc := s2.conclude(12); rc.Status != protocol.StatusSuccess {
		t.Errorf("receipt %+v", rc)
	}
	eventually(t, "pending_conclusions = 0 after the ACK", func() bool { return value(h.w.Metrics().PendingConclusions) == 0 })
}

// CONCLUDEs stay until ACKed: resent after a reconnect while unACKed, not
// once ACKed.
func TestConcludeResentUntilAcked(t *testing.T) {
	s1 := newSentinel(t)
	s1.autoAck.Store(false)
	h := startWorker(t, s1, options{})
	r1, _ := s1.identify()
	h.dispatch(r1.id, 21, 2, "emitter", "emit:3")
	_, rc1 := s1.conclude(21)
	m := h.w.Metrics()
	wantMetric(t, "pending_conclusions", m.PendingConclusions, 1)

	s1.close()
	s2 := newSentinelAt(t, s1.ep)
	s2.autoAck.Store(false)
	h.s = s2
	s2.identify()
	_, rc2 := s2.conclude(21)
	if rc2.Status != rc1.Status || rc2.Attempt != 2 || rc2.Metrics["rows"] != 3 || len(rc2.Artifacts) != 1 ||
		rc2.Artifacts[0]["uri"] != rc1.Artifacts[0]["uri"] {
		t.Errorf("resent receipt %+v differs from the first %+v", rc2, rc1)
	}
	r2 := s2.wait(protocol.OpHeartbeat, 0, nil)
	// An ACK naming another attempt (of an earlier CONCLUDE of the same
	// job) does not settle this one.
	s2.send(r2.id, protocol.OpAck, 21, protocol.DeployResponse{Success: true, Attempt: 1})
	s2.send(r2.id, protocol.OpHeartbeat, 0, nil)
	s2.heartbeat("probe answer after the foreign ACK", nil)
	if v := value(m.PendingConclusions); v != 1 {
		t.Fatalf("pending_conclusions = %v after an ACK for attempt 1, want 1 (attempt 2 is pending)", v)
	}
	s2.send(r2.id, protocol.OpAck, 21, protocol.DeployResponse{Success: true, Attempt: 2})
	eventually(t, "pending_conclusions = 0", func() bool { return value(m.PendingConclusions) == 0 })

	s2.close()
	s3 := newSentinelAt(t, s1.ep)
	h.s = s3
	s3.identify()
	// What the worker sends on connecting (IDENTIFY, status, unACKed
	// CONCLUDEs) precedes its periodic heartbeats on the same connection.
	s3.heartbeat("first", nil)
	s3.heartbeat("second", nil)
	s3.heartbeat("third", nil)
	if n := s3.countOp(protocol.OpConclude, -1); n != 0 {
		t.Errorf("an ACKed CONCLUDE was resent (%d)", n)
	}
	eventually(t, "reconnects_total = 2", func() bool { return value(m.Reconnects) == 2 })
}

// ERR (job 0) starting with ReidentifyPrefix: the worker identifies again on
// the same connection, and resends what the sentinel has not ACKed.
func TestReidentify(t *testing.T) {
	s := newSentinel(t)
	s.autoAck.Store(false)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 31, 1, "emitter", "emit:2")
	s.conclude(31)

	// Other ERRs do not.
	s.send(r.id, protocol.OpErr, 0, protocol.ErrorPayload{Message: "something else went wrong"})
	s.send(r.id, protocol.OpErr, 31, protocol.ErrorPayload{Message: protocol.ReidentifyPrefix + " (but about a job)"})
	s.send(r.id, protocol.OpHeartbeat, 0, nil)
	s.heartbeat("probe answer", nil)
	time.Sleep(200 * time.Millisecond)
	if n := s.countOp(protocol.OpIdentify, -1); n != 1 {
		t.Fatalf("%d IDENTIFYs after unrelated ERRs, want 1", n)
	}

	s.send(r.id, protocol.OpErr, 0, protocol.ErrorPayload{Message: protocol.ReidentifyPrefix + " (this sentinel does not know this connection)"})
	r2, id := s.identify()
	if string(r2.id) != string(r.id) {
		t.Errorf("re-IDENTIFY came from a new connection %q (was %q)", r2.id, r.id)
	}
	if id.WorkerID != h.w.ID() || id.Slots != 2 {
		t.Errorf("re-IDENTIFY %+v", id)
	}
	// The sentinel that forgot this worker did not ACK the CONCLUDE: it is
	// sent again after the IDENTIFY.
	rr, rc := s.conclude(31)
	if rc.Status != protocol.StatusSuccess || rr.at.Before(r2.at) {
		t.Errorf("CONCLUDE not resent after re-IDENTIFY: %+v", rc)
	}
	wantMetric(t, "reconnects_total", h.w.Metrics().Reconnects, 0)
}

// A sentinel silent for longer than SentinelTimeout: the worker reconnects.
// One that probes keeps it connected.
func TestSilentSentinelCausesReconnect(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		s := newSentinel(t)
		h := startWorker(t, s, options{cfg: func(c *worker.Config) { c.SentinelTimeout = 400 * time.Millisecond }})
		r1, _ := s.identify()
		r2, _ := s.identify()
		if string(r1.id) == string(r2.id) {
			t.Errorf("the second IDENTIFY came from the same connection")
		}
		if d := r2.at.Sub(r1.at); d < 400*time.Millisecond {
			t.Errorf("reconnected after %s, before SentinelTimeout", d)
		}
		eventually(t, "reconnects_total ≥ 1", func() bool { return value(h.w.Metrics().Reconnects) >= 1 })
	})
	t.Run("probing", func(t *testing.T) {
		s := newSentinel(t)
		startWorker(t, s, options{cfg: func(c *worker.Config) { c.SentinelTimeout = 800 * time.Millisecond }})
		r, _ := s.identify()
		end := time.Now().Add(2500 * time.Millisecond)
		for time.Now().Before(end) {
			s.send(r.id, protocol.OpHeartbeat, 0, nil)
			time.Sleep(100 * time.Millisecond)
		}
		if n := s.countOp(protocol.OpIdentify, -1); n != 1 {
			t.Errorf("%d IDENTIFYs from a worker that was probed all along, want 1", n)
		}
	})
}

// Malformed messages are dropped without harm; a DISPATCH whose JSON is bad
// is answered with an ERR for that job; other opcodes are handled.
func TestMalformedMessages(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	hdr := func(op protocol.OpCode, job uint64, n uint32) []byte {
		b := protocol.Header{OpCode: op, JobID: job, PayloadLen: n}.Bytes()
		return b[:]
	}
	badVersion := hdr(protocol.OpDispatch, 1, 0)
	badVersion[0] = 3
	badOp := hdr(protocol.OpDispatch, 1, 0)
	badOp[1] = 99
	s.sendFrames(r.id, []byte("short"), nil)
	s.sendFrames(r.id, badVersion, nil)
	s.sendFrames(r.id, badOp, nil)
	s.sendFrames(r.id, hdr(protocol.OpDispatch, 1, 10), []byte("{}"))                 // length mismatch
	s.sendFrames(r.id, hdr(protocol.OpDispatch, 1, 2), []byte("{}"), []byte("extra")) // 3 frames
	s.sendFrames(r.id, hdr(protocol.OpDispatch, 1, 2))                                // 1 frame, not RELOAD
	s.sendFrames(r.id, hdr(protocol.OpReload, 0, 0))                                  // lone RELOAD: fine
	s.sendFrames(r.id, hdr(protocol.OpUnknown, 0, 0), nil)
	s.send(r.id, protocol.OpAck, 0, protocol.DeployResponse{Success: true})
	s.send(r.id, protocol.OpConclude, 0, protocol.JobReceipt{Status: protocol.StatusSuccess})
	// Bad DISPATCH payloads: not JSON, not an object.
	s.sendFrames(r.id, hdr(protocol.OpDispatch, 51, 8), []byte("not json"))
	s.sendFrames(r.id, hdr(protocol.OpDispatch, 52, 2), []byte("[]"))
	s.send(r.id, protocol.OpPrepareEnv, 0, protocol.PrepareEnvCommand{EnvHash: "abc123", LockfileContent: "x"})

	for _, id := range []int64{51, 52} {
		e := s.wait(protocol.OpErr, id, nil)
		var p protocol.ErrorPayload
		if err := e.m.Unmarshal(&p); err != nil || !strings.HasPrefix(p.Message, "bad DISPATCH payload") {
			t.Errorf("ERR for job %d: %q (%v)", id, e.m.Payload, err)
		}
	}
	e := s.wait(protocol.OpErr, 0, nil)
	var p protocol.ErrorPayload
	if err := e.m.Unmarshal(&p); err != nil || !strings.Contains(p.Message, "PREPARE_ENV abc123") {
		t.Errorf("ERR for PREPARE_ENV: %q (%v)", e.m.Payload, err)
	}
	// Still alive and well: a probe is answered and a job runs.
	s.send(r.id, protocol.OpHeartbeat, 0, nil)
	s.heartbeat("probe answer", nil)
	h.dispatch(r.id, 53, 1, "emitter", "emit:1")
	if _, rc := s.conclude(53); rc.Status != protocol.StatusSuccess {
		t.Errorf("job after junk: %+v", rc)
	}
	if n := s.countOp(protocol.OpErr, -1); n != 3 {
		t.Errorf("%d ERRs, want 3 (two bad DISPATCHes, PREPARE_ENV):\n%s", n, s.dump())
	}
	if n := s.countOp(protocol.OpIdentify, -1); n != 1 {
		t.Errorf("the worker reconnected (%d IDENTIFYs)", n)
	}
	wantMetric(t, "jobs_received_total", h.w.Metrics().JobsReceived, 1)
}

// Failures become CONCLUDE FAILED with a "[Job N]" message: a plugin error,
// an input that does not exist, a plugin that cannot be loaded.
func TestFailedJobs(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{})
	r, _ := s.identify()
	h.dispatch(r.id, 61, 2, "failer", "fail:kaputt in row 3")
	_, rc := s.conclude(61)
	if rc.Status != protocol.StatusFailed || rc.Attempt != 2 || rc.ErrorMessage != "[Job 61] PLUGIN_ERROR: kaputt in row 3" ||
		len(rc.Artifacts) != 0 || rc.Metrics["rows"] != 0 {
		t.Errorf("plugin error: %+v", rc)
	}
	s.dispatch(r.id, 62, protocol.DispatchCommand{PluginName: "emitter", FilePath: filepath.Join(h.out, "missing.csv"),
		SourceCode: "emit:1", Attempt: 1})
	_, rc = s.conclude(62)
	if rc.Status != protocol.StatusFailed || !strings.HasPrefix(rc.ErrorMessage, "[Job 62] INPUT: input file ") {
		t.Errorf("missing input: %+v", rc)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 2)
	wantMetric(t, "bridge_errors_total (INPUT is not a bridge error)", m.BridgeErrors, 1)
	wantMetric(t, "jobs_completed_total", m.JobsCompleted, 0)
	entries, _ := os.ReadDir(h.out)
	if len(entries) != 0 {
		t.Errorf("failed jobs left output: %v", entries)
	}
}

// A job past the host's JobTimeout fails (it is not an abort) and counts as
// a bridge timeout.
func TestJobTimeout(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{jobTimeout: 200 * time.Millisecond})
	r, _ := s.identify()
	h.dispatch(r.id, 65, 1, "blocker", "block")
	_, rc := s.conclude(65)
	if rc.Status != protocol.StatusFailed || rc.Requeue || !strings.HasPrefix(rc.ErrorMessage, "[Job 65] TIMEOUT") {
		t.Errorf("receipt %+v", rc)
	}
	m := h.w.Metrics()
	wantMetric(t, "bridge_timeouts_total", m.BridgeTimeouts, 1)
	wantMetric(t, "bridge_errors_total", m.BridgeErrors, 0)
	wantMetric(t, "jobs_aborted_total", m.JobsAborted, 0)
}

// The default Config.Plugin (the DISPATCH's source as a Python plugin)
// fails a DISPATCH without source code before running anything.
func TestEmptySourceFails(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{python: true, cfg: func(c *worker.Config) { c.Plugin = nil }})
	r, _ := s.identify()
	h.dispatch(r.id, 71, 6, "py_empty", "")
	_, rc := s.conclude(71)
	if rc.Status != protocol.StatusFailed || rc.Attempt != 6 || !strings.HasPrefix(rc.ErrorMessage, "[Job 71] ") ||
		!strings.Contains(rc.ErrorMessage, "source_code") || !strings.Contains(rc.ErrorMessage, "py_empty") {
		t.Errorf("receipt %+v", rc)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 1)
	wantMetric(t, "bridge_executions_total", m.BridgeExecutions, 0)
}

func TestPythonPlugin(t *testing.T) {
	if _, err := worker.PythonPlugin(&protocol.DispatchCommand{PluginName: "p"}); err == nil {
		t.Error("no error for a DISPATCH without source")
	}
	p, err := worker.PythonPlugin(&protocol.DispatchCommand{PluginName: "p", SourceCode: "x = 1\n"})
	if err != nil {
		t.Fatal(err)
	}
	// sha256("x = 1\n")
	if p.Name != "p" || p.Kind != "python" || string(p.Source) != "x = 1\n" || len(p.Hash) != 64 {
		t.Errorf("plugin %+v", p)
	}
}

func TestMetricsRegistration(t *testing.T) {
	hst := newHost(t)
	reg := prometheus.NewRegistry()
	w, err := worker.New(worker.Config{Host: hst, Registerer: reg, Slots: 5})
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"casparian_worker_jobs_received_total", "casparian_worker_reconnects_total",
		"casparian_worker_slots", "casparian_worker_pending_conclusions", "casparian_worker_job_duration_seconds"} {
		if !names[n] {
			t.Errorf("metric %s not registered (have %v)", n, names)
		}
	}
	wantMetric(t, "slots", w.Metrics().Slots, 5)
	if _, err := worker.New(worker.Config{Host: hst, Registerer: reg}); err == nil {
		t.Error("a second worker registered the same metrics without error")
	}
	hostname, _ := os.Hostname()
	if w.ID() != hostname+"-"+strconv.Itoa(os.Getpid()) {
		t.Errorf("default worker id %q", w.ID())
	}
}

func TestRunRejectsBadEndpoint(t *testing.T) {
	w, err := worker.New(worker.Config{Host: newHost(t), Connect: "udp://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "udp://127.0.0.1:1") {
		t.Errorf("Run with a udp endpoint: %v", err)
	}
}

// Run with an already cancelled context and no sentinel returns at once.
func TestRunCancelledWithoutSentinel(t *testing.T) {
	s := newSentinel(t)
	addr := s.connect()
	s.close()
	w, err := worker.New(worker.Config{Host: newHost(t), Connect: addr, ReconnectMin: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return")
	}
	wantMetric(t, "reconnects_total (no connection was ever made)", w.Metrics().Reconnects, 0)
}

func newHost(t *testing.T) *host.Host {
	t.Helper()
	hst, err := host.New(host.Config{Runtimes: map[guest.Kind]guest.Runtime{kindTest: newTestRuntime()}, OutputDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return hst
}
