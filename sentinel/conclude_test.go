package sentinel

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

var ackExts = []string{protocol.ExtAttempt, protocol.ExtSlots, protocol.ExtConcludeAck}

func ackOf(t *testing.T, m protocol.Message) protocol.DeployResponse {
	t.Helper()
	var r protocol.DeployResponse
	if err := m.Unmarshal(&r); err != nil {
		t.Fatalf("bad ACK payload %q: %v", m.Payload, err)
	}
	return r
}

func TestConcludeSuccessWithAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: ackExts})
	got, _ := w.dispatch()
	if got != id {
		t.Fatalf("got job %d, want %d", got, id)
	}
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess, Metrics: map[string]int64{"rows": 42},
		Artifacts: []map[string]string{{"topic": "output", "uri": "parquet://o.parquet"}}})
	ack := ackOf(t, w.expect(protocol.OpAck, id))
	if !ack.Success {
		t.Fatalf("ACK %+v, want success", ack)
	}
	j := e.waitStatus(id, store.StatusCompleted)
	if j.ResultSummary != "Success" || j.EndTime.IsZero() {
		t.Errorf("completed job: summary %q end %v", j.ResultSummary, j.EndTime)
	}
	var res struct {
		Metrics   map[string]int64    `json:"metrics"`
		Artifacts []map[string]string `json:"artifacts"`
	}
	if err := json.Unmarshal([]byte(j.ResultJSON), &res); err != nil || res.Metrics["rows"] != 42 ||
		len(res.Artifacts) != 1 || res.Artifacts[0]["uri"] != "parquet://o.parquet" {
		t.Errorf("result_json %q (%v)", j.ResultJSON, err)
	}
	m := e.s.Metrics()
	e.waitMetric("jobs_completed_total", m.JobsCompleted, 1)
	e.waitMetric("job duration observations", m.JobDuration, 1)
	if info, _ := e.info("w"); len(info.Jobs) != 0 {
		t.Errorf("worker still holds %v after its conclusion", info.Jobs)
	}
	if got := val(t, m.BusySlots); got != 0 {
		t.Errorf("busy slots = %v, want 0", got)
	}

	// A duplicate CONCLUDE (the worker resends an unacknowledged one) is
	// fenced, but still acknowledged so the worker stops resending it.
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusFailed, ErrorMessage: "late"})
	ack = ackOf(t, w.expect(protocol.OpAck, id))
	if !ack.Success {
		t.Errorf("ACK of a duplicate CONCLUDE %+v, want success", ack)
	}
	e.waitMetric("stale_conclusions_total", m.StaleConclusions, 1)
	if j := e.get(id); j.Status != store.StatusCompleted {
		t.Fatalf("duplicate CONCLUDE changed the job to %s", j.Status)
	}
}

func TestConcludeWithoutAckExtensionGetsNoAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: []string{protocol.ExtAttempt}})
	w.dispatch()
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
	e.waitStatus(id, store.StatusCompleted)
	w.expectNone(protocol.OpAck, quiet)
}

func TestConcludeFailed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: ackExts})
	w.dispatch()
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusFailed, ErrorMessage: "ValueError: bad row 7"})
	if !ackOf(t, w.expect(protocol.OpAck, id)).Success {
		t.Error("ACK not successful")
	}
	j := e.waitStatus(id, store.StatusFailed)
	if j.ErrorMessage != "ValueError: bad row 7" || j.RetryCount != 0 {
		t.Errorf("failed job: error %q retries %d", j.ErrorMessage, j.RetryCount)
	}
	e.waitMetric("jobs_failed_total", e.s.Metrics().JobsFailed, 1)
	// FAILED is terminal: the job is not dispatched again.
	w.expectNone(protocol.OpDispatch, quiet)
}

func TestConcludeRejectedRequeues(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: ackExts})
	_, d1 := w.dispatch()
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusRejected, ErrorMessage: "no free slot"})
	m := e.s.Metrics()
	e.waitMetric("jobs_rejected_total", m.JobsRejected, 1)
	e.waitMetric("jobs_requeued_total", m.JobsRequeued, 1)
	// Requeued with retry_count+1, then (after the short backoff)
	// dispatched again as a new attempt.
	_, d2 := w.dispatch()
	if d2.Attempt != d1.Attempt+1 {
		t.Errorf("redispatch attempt %d, want %d", d2.Attempt, d1.Attempt+1)
	}
	j := e.get(id)
	if j.Status != store.StatusRunning || j.RetryCount != 1 || j.LastError != "no free slot" {
		t.Errorf("job after REJECTED and redispatch: %s retries %d last error %q", j.Status, j.RetryCount, j.LastError)
	}
	if got := val(t, m.JobsFailed); got != 0 {
		t.Errorf("jobs_failed_total = %v", got)
	}
}

func TestConcludeRejectedRequeuedStateInDB(t *testing.T) {
	t.Parallel()
	// No worker can take the job back: observe the QUEUED state itself.
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	w.dispatch()
	w.close()
	w2 := e.dial("", false)
	// A CONCLUDE from another (unregistered) connection that echoes the
	// attempt is accepted: the attempt alone fences it.
	w2.send(protocol.OpConclude, uint64(id), protocol.JobReceipt{Status: protocol.StatusRejected, Attempt: 1})
	j := e.waitStatus(id, store.StatusQueued)
	if j.RetryCount != 1 || j.LeaseOwner != "" || j.NextAttemptAt.IsZero() {
		t.Errorf("requeued job: retries %d owner %q next attempt %v", j.RetryCount, j.LeaseOwner, j.NextAttemptAt)
	}
	// The unknown peer is asked to identify.
	errm := w2.expect(protocol.OpErr, 0)
	var p protocol.ErrorPayload
	if err := errm.Unmarshal(&p); err != nil || !strings.HasPrefix(p.Message, protocol.ReidentifyPrefix) {
		t.Errorf("ERR %q (%v), want the reidentify prefix", p.Message, err)
	}
}

func TestConcludeAborted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	requeue, fail := e.job("p"), e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Slots: 2, Exts: ackExts})
	w.dispatch()
	w.dispatch()
	w.conclude(requeue, protocol.JobReceipt{Status: protocol.StatusAborted, Requeue: true, ErrorMessage: "worker shutting down"})
	w.conclude(fail, protocol.JobReceipt{Status: protocol.StatusAborted, ErrorMessage: "aborted by operator"})
	w.expect(protocol.OpAck, requeue)
	w.expect(protocol.OpAck, fail)
	j := e.get(fail)
	if j.Status != store.StatusFailed || j.ErrorMessage != "aborted by operator" {
		t.Errorf("ABORTED without requeue: %s %q, want FAILED", j.Status, j.ErrorMessage)
	}
	j = e.get(requeue)
	if j.RetryCount != 1 || (j.Status != store.StatusQueued && j.Status != store.StatusRunning) {
		t.Errorf("ABORTED with requeue: %s retries %d, want requeued", j.Status, j.RetryCount)
	}
	if j.Status == store.StatusQueued && j.LastError != "worker shutting down" {
		t.Errorf("last error %q", j.LastError)
	}
	// (The ACK is queued before the counters move: wait for them.)
	m := e.s.Metrics()
	e.waitMetric("jobs_aborted_total", m.JobsAborted, 2)
	e.waitMetric("jobs_requeued_total", m.JobsRequeued, 1)
	// The requeued one comes back.
	if id, _ := w.dispatch(); id != requeue {
		t.Errorf("redispatched job %d, want %d", id, requeue)
	}
}

// A late CONCLUDE for an earlier attempt of a job the worker now runs again
// must be rejected without touching the job nor the worker's slot.
func TestStaleConclusionIsFenced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: ackExts})
	_, d1 := w.dispatch()
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusRejected})
	w.expect(protocol.OpAck, id)
	_, d2 := w.dispatch()
	if d2.Attempt <= d1.Attempt {
		t.Fatalf("attempts %d then %d", d1.Attempt, d2.Attempt)
	}
	m := e.s.Metrics()
	before := e.get(id)

	// The worker's late FAILED for attempt 1.
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusFailed, Attempt: d1.Attempt, ErrorMessage: "late"})
	ack := ackOf(t, w.expect(protocol.OpAck, id))
	e.waitMetric("stale_conclusions_total", m.StaleConclusions, 1)
	if !ack.Success {
		t.Errorf("ACK of a fenced CONCLUDE %+v, want success (nothing to resend)", ack)
	}
	after := e.get(id)
	if after.Status != store.StatusRunning || after.Attempt != d2.Attempt || after.ErrorMessage != "" ||
		after.RetryCount != before.RetryCount {
		t.Fatalf("stale CONCLUDE changed the job: %+v", after)
	}
	// The worker still holds attempt 2: its slot stays busy, so a second
	// job is not dispatched to it (slots=1).
	if info, _ := e.info("w"); !slices.Equal(info.Jobs, []int64{id}) {
		t.Errorf("worker jobs after a stale CONCLUDE: %v, want [%d]", info.Jobs, id)
	}
	other := e.job("p")
	w.expectNone(protocol.OpDispatch, quiet)
	// The current attempt concludes normally.
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: d2.Attempt})
	w.expect(protocol.OpAck, id)
	e.waitStatus(id, store.StatusCompleted)
	if got, _ := w.dispatch(); got != other {
		t.Errorf("next job %d, want %d", got, other)
	}
	// REJECTED and SUCCESS, not the stale one.
	e.waitMetric("job duration observations", m.JobDuration, 2)
}

func TestErrWithJobIDFailsJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	w.dispatch()
	w.send(protocol.OpErr, uint64(id), protocol.ErrorPayload{Message: "PREPARE_ENV failed", Traceback: "Traceback: boom"})
	j := e.waitStatus(id, store.StatusFailed)
	if !strings.Contains(j.ErrorMessage, "PREPARE_ENV failed") || !strings.Contains(j.ErrorMessage, "Traceback: boom") {
		t.Errorf("error %q", j.ErrorMessage)
	}
	// An ERR without a job id changes nothing.
	id2 := e.job("p")
	w.dispatch()
	w.send(protocol.OpErr, 0, protocol.ErrorPayload{Message: "something odd"})
	w.send(protocol.OpErr, uint64(id2), nil) // empty payload: still fails the job
	e.waitStatus(id2, store.StatusFailed)
	e.waitMetric("jobs_failed_total", e.s.Metrics().JobsFailed, 2)
}

func TestConcludeUnknownJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}, Exts: ackExts})
	e.waitRegistered("w")
	w.conclude(4242, protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: 1})
	ack := ackOf(t, w.expect(protocol.OpAck, 4242))
	if ack.Success {
		t.Errorf("ACK for an unknown job %+v, want failure", ack)
	}
	e.waitMetric("stale_conclusions_total", e.s.Metrics().StaleConclusions, 1)
	// job id 0 is a protocol error.
	before := val(t, e.s.Metrics().ProtocolErrors)
	w.send(protocol.OpConclude, 0, protocol.JobReceipt{Status: protocol.StatusSuccess})
	e.waitMetric("protocol_errors_total", e.s.Metrics().ProtocolErrors, before+1)
}
