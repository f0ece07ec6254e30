package sentinel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

func TestSilentWorkerIsEvicted(t *testing.T) {
	t.Parallel()
	const hbTimeout = 600 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.HeartbeatTimeout = hbTimeout }})
	e.plugin("p")
	id := e.job("p")
	sentAt := time.Now() // before the IDENTIFY, its last message
	silent := e.worker(workerOpts{ID: "silent", Caps: []string{"p"}})
	if got, _ := silent.dispatch(); got != id {
		t.Fatalf("got job %d, want %d", got, id)
	}
	// Another worker, alive (heartbeating) but connected after the job went
	// out.
	alive := e.worker(workerOpts{ID: "alive", Caps: []string{"p"}})
	alive.startHeartbeats(50 * time.Millisecond)

	m := e.s.Metrics()
	e.waitMetric("workers_cleaned_up_total", m.WorkersCleanedUp, 1)
	if since := time.Since(sentAt); since < hbTimeout {
		t.Errorf("evicted after %s, before the heartbeat timeout %s", since, hbTimeout)
	}
	if got := e.registered(); !slices.Equal(got, []string{"alive"}) {
		t.Errorf("registered after the eviction: %v, want [alive]", got)
	}
	if row, ok := e.workerRow("silent"); !ok || row.Status != store.WorkerEvicted || !strings.Contains(row.StatusReason, "silent") ||
		len(row.ActiveJobIDs) != 0 {
		t.Errorf("registry row of the silent worker: %+v", row)
	}
	// Its job was requeued and goes to the live worker.
	got, d := alive.dispatch()
	if got != id || d.Attempt != 2 {
		t.Fatalf("live worker got job %d attempt %d, want %d attempt 2", got, d.Attempt, id)
	}
	j := e.get(id)
	if j.RetryCount != 1 || j.LeaseOwner != "alive" || !strings.Contains(j.LastError, "silent") {
		t.Errorf("job after the eviction: retries %d owner %q last error %q", j.RetryCount, j.LeaseOwner, j.LastError)
	}
	if got := val(t, m.JobsRequeued); got != 1 {
		t.Errorf("jobs_requeued_total = %v, want 1", got)
	}
	if got := val(t, m.Workers); got != 1 {
		t.Errorf("workers gauge = %v, want 1", got)
	}
	// The live worker was never evicted.
	if got := val(t, m.WorkersCleanedUp); got != 1 {
		t.Errorf("workers_cleaned_up_total = %v, want 1", got)
	}

	// The evicted worker's late CONCLUDE is fenced, and it is asked to
	// identify again.
	silent.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
	errm := silent.expect(protocol.OpErr, 0)
	var p protocol.ErrorPayload
	if err := errm.Unmarshal(&p); err != nil || !strings.HasPrefix(p.Message, protocol.ReidentifyPrefix) {
		t.Errorf("evicted worker got ERR %q, want the reidentify prefix", p.Message)
	}
	e.waitMetric("stale_conclusions_total", m.StaleConclusions, 1)
	if j := e.get(id); j.Status != store.StatusRunning || j.LeaseOwner != "alive" {
		t.Errorf("late CONCLUDE of the evicted worker changed the job: %s %q", j.Status, j.LeaseOwner)
	}
}

func TestLeaseExpiresWithoutHeartbeatListing(t *testing.T) {
	t.Parallel()
	const lease = 300 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Lease = lease }})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "forgetful", Caps: []string{"p"}})
	_, d1 := w.dispatch()
	// It heartbeats, but does not list the job.
	w.startHeartbeats(50 * time.Millisecond)
	m := e.s.Metrics()
	e.waitMetric("leases_expired_total", m.LeasesExpired, 1)
	// The sentinel ABORTs the job on the worker, which no longer owns it.
	w.expect(protocol.OpAbort, id)
	// It was requeued, and is dispatched again (to the same worker, its only
	// one) as a new attempt.
	got, d2 := w.dispatch()
	if got != id || d2.Attempt != d1.Attempt+1 {
		t.Fatalf("redispatch: job %d attempt %d, want %d attempt %d", got, d2.Attempt, id, d1.Attempt+1)
	}
	j := e.get(id)
	if j.RetryCount != 1 || !strings.Contains(j.LastError, "lease expired") {
		t.Errorf("job after lease expiry: retries %d last error %q", j.RetryCount, j.LastError)
	}
	if got := val(t, m.JobsRequeued); got < 1 {
		t.Errorf("jobs_requeued_total = %v", got)
	}
	// The worker itself was not evicted: it kept heartbeating.
	if got := val(t, m.WorkersCleanedUp); got != 0 {
		t.Errorf("workers_cleaned_up_total = %v, want 0", got)
	}
}

func TestHeartbeatExtendsLease(t *testing.T) {
	t.Parallel()
	const lease = 500 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Lease = lease }})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "busy", Caps: []string{"p"}, Exts: ackExts})
	_, d := w.dispatch()
	w.hold(id)
	w.startHeartbeats(40 * time.Millisecond)
	start := time.Now()
	for time.Since(start) < 4*lease {
		j := e.get(id)
		if j.Status != store.StatusRunning || j.Attempt != d.Attempt || j.LeaseOwner != "busy" {
			t.Fatalf("after %s: job %s attempt %d owner %q; want it RUNNING on the worker that lists it",
				time.Since(start), j.Status, j.Attempt, j.LeaseOwner)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if j := e.get(id); !j.LeaseExpiresAt.After(time.Now()) {
		t.Errorf("lease expires at %v, in the past", j.LeaseExpiresAt)
	}
	if got := val(t, e.s.Metrics().LeasesExpired); got != 0 {
		t.Errorf("leases_expired_total = %v, want 0", got)
	}
	w.expectNone(protocol.OpAbort, 0)
	// The registry row lists the job.
	if row, _ := e.workerRow("busy"); !slices.Equal(row.ActiveJobIDs, []int64{id}) || row.BusySlots != 1 {
		t.Errorf("registry row: jobs %v busy %d", row.ActiveJobIDs, row.BusySlots)
	}
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
	w.expect(protocol.OpAck, id)
	e.waitStatus(id, store.StatusCompleted)
}

// A worker listing a job leased to someone else is told to ABORT it.
func TestHeartbeatForeignJobIsAborted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	owner := e.worker(workerOpts{ID: "owner", Caps: []string{"p"}})
	owner.dispatch()
	other := e.worker(workerOpts{ID: "other", Caps: []string{"q"}})
	other.hold(id, 999999)
	other.heartbeat()
	other.expect(protocol.OpAbort, id)
	other.expect(protocol.OpAbort, 999999)
	if j := e.get(id); j.Status != store.StatusRunning || j.LeaseOwner != "owner" {
		t.Errorf("foreign heartbeat changed the job: %s %q", j.Status, j.LeaseOwner)
	}
	// The ABORTs are not repeated for every heartbeat.
	other.heartbeat()
	other.expectNone(protocol.OpAbort, quiet)
}

func TestUnknownPeerIsAskedToIdentify(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	p := e.dial("", false)
	p.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerIdle})
	m := p.expect(protocol.OpErr, 0)
	var ep protocol.ErrorPayload
	if err := m.Unmarshal(&ep); err != nil || !strings.HasPrefix(ep.Message, protocol.ReidentifyPrefix) {
		t.Fatalf("ERR %q (%v), want one starting with %q", ep.Message, err, protocol.ReidentifyPrefix)
	}
	// A header-only HEARTBEAT (probe) from an unknown peer gets the same.
	p.send(protocol.OpHeartbeat, 0, nil)
	p.expect(protocol.OpErr, 0)
	if got := e.registered(); len(got) != 0 {
		t.Errorf("registered %v", got)
	}
	// Once it identifies, its heartbeats are accepted.
	p.identify(workerOpts{ID: "late", Caps: []string{"p"}})
	e.waitRegistered("late")
	p.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerIdle})
	p.expectNone(protocol.OpErr, quiet)
}

func TestReconnectKeepsJobs(t *testing.T) {
	t.Parallel()
	const lease = 800 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Lease = lease }})
	e.plugin("p")
	a, b := e.job("p"), e.job("p")
	old := e.worker(workerOpts{ID: "phoenix", Caps: []string{"p"}, Slots: 2})
	old.dispatch()
	old.dispatch()
	old.close() // the connection dies; the worker process lives on

	w := e.worker(workerOpts{ID: "phoenix", Caps: []string{"p"}, Slots: 2, Exts: ackExts})
	w.hold(a, b)
	w.startHeartbeats(40 * time.Millisecond)
	eventually(t, waitFor, func() (bool, string) {
		info, ok := e.info("phoenix")
		return ok && slices.Equal(info.Jobs, []int64{a, b}), fmt.Sprintf("worker info %+v", info)
	})
	if n := len(e.s.Workers(e.ctx)); n != 1 {
		t.Errorf("%d registrations, want 1 (the old route is retired)", n)
	}
	// Its heartbeats keep both leases across several lease periods.
	time.Sleep(3 * lease)
	for _, id := range []int64{a, b} {
		if j := e.get(id); j.Status != store.StatusRunning || j.Attempt != 1 || j.LeaseOwner != "phoenix" {
			t.Fatalf("job %d after the reconnect: %s attempt %d owner %q", id, j.Status, j.Attempt, j.LeaseOwner)
		}
	}
	// Both slots are still taken: a new job waits.
	c := e.job("p")
	w.expectNone(protocol.OpDispatch, quiet)
	// Its CONCLUDEs are accepted (one echoing the attempt, one plain v4).
	w.conclude(a, protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: 1})
	w.release(a)
	w.expect(protocol.OpAck, a)
	w.conclude(b, protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: -1})
	w.release(b)
	w.expect(protocol.OpAck, b)
	e.waitStatus(a, store.StatusCompleted)
	e.waitStatus(b, store.StatusCompleted)
	if got, _ := w.dispatch(); got != c {
		t.Errorf("next job %d, want %d", got, c)
	}
	m := e.s.Metrics()
	if got := val(t, m.LeasesExpired) + val(t, m.StaleConclusions) + val(t, m.WorkersCleanedUp); got != 0 {
		t.Errorf("leases expired + stale conclusions + evictions = %v, want 0", got)
	}
}

// After a restart the sentinel adopts the RUNNING jobs a worker reports, as
// long as the queue says the worker holds their lease.
func TestRestartAdoptsLeasedJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "survivor", Caps: []string{"p"}, Exts: ackExts})
	_, d := w.dispatch()
	e.stop()
	if j := e.get(id); j.Status != store.StatusRunning {
		t.Fatalf("job %s after shutdown", j.Status)
	}
	// A new sentinel on the same database.
	e2 := newEnv(t, envOpt{dbPath: e.dbPath})
	w2 := e2.dial("", false)
	w2.id = "survivor"
	w2.hold(id)
	w2.heartbeat() // before IDENTIFY: unknown
	w2.expect(protocol.OpErr, 0)
	w2.identify(workerOpts{ID: "survivor", Caps: []string{"p"}, Exts: ackExts})
	w2.heartbeat()
	eventually(t, waitFor, func() (bool, string) {
		info, _ := e2.info("survivor")
		return slices.Equal(info.Jobs, []int64{id}), fmt.Sprintf("jobs %v", info.Jobs)
	})
	w2.expectNone(protocol.OpAbort, quiet)
	w2.send(protocol.OpConclude, uint64(id), protocol.JobReceipt{Status: protocol.StatusSuccess, Attempt: d.Attempt})
	if !ackOf(t, w2.expect(protocol.OpAck, id)).Success {
		t.Error("ACK not successful")
	}
	e2.waitStatus(id, store.StatusCompleted)
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	a, b := e.job("p"), e.job("p")
	w1 := e.worker(workerOpts{ID: "w1", Caps: []string{"p"}})
	w2 := e.worker(workerOpts{ID: "w2", Caps: []string{"p"}})
	w1.dispatch()
	w2.dispatch()
	if row, _ := e.workerRow("w1"); row.Status != store.WorkerActive {
		t.Fatalf("w1 row %+v", row)
	}
	took := e.stop()
	if took > 3*time.Second {
		t.Errorf("Run took %s to return after cancel", took)
	}
	for _, id := range []int64{a, b} {
		j := e.get(id)
		if j.Status != store.StatusRunning || j.LeaseOwner == "" || !j.LeaseExpiresAt.After(time.Now()) {
			t.Errorf("job %d after shutdown: %s owner %q lease %v; want RUNNING with its lease", id, j.Status, j.LeaseOwner, j.LeaseExpiresAt)
		}
	}
	ws, err := e.st.ListWorkers(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 2 {
		t.Fatalf("%d worker rows, want 2", len(ws))
	}
	for _, r := range ws {
		if r.Status != store.WorkerGone || len(r.ActiveJobIDs) != 0 {
			t.Errorf("worker row after shutdown: %+v, want GONE without jobs", r)
		}
	}
	if got := val(t, e.s.Metrics().JobsFailed) + val(t, e.s.Metrics().JobsRequeued); got != 0 {
		t.Errorf("shutdown failed or requeued %v jobs", got)
	}
	// Workers() on a stopped sentinel returns nothing at once, even with a
	// context that never ends.
	if ws, ok := workersWithin(e.s, 2*time.Second); !ok || ws != nil {
		t.Errorf("Workers after shutdown: %v (returned: %v), want nil at once", ws, ok)
	}
}

func TestWorkersBeforeRun(t *testing.T) {
	t.Parallel()
	st, err := store.Open(t.Context(), t.TempDir()+"/q.db", store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, err := New(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if ws, ok := workersWithin(s, 2*time.Second); !ok || ws != nil {
		t.Errorf("Workers before Run: %v (returned: %v), want nil at once", ws, ok)
	}
}

// workersWithin calls s.Workers with a context that never ends and reports
// whether it returned within d.
func workersWithin(s *Sentinel, d time.Duration) ([]WorkerInfo, bool) {
	ch := make(chan []WorkerInfo, 1)
	go func() { ch <- s.Workers(context.Background()) }()
	select {
	case ws := <-ch:
		return ws, true
	case <-time.After(d):
		return nil, false
	}
}

// The registry row follows the worker: after its job concludes and it
// reports idle, the row no longer lists the job, and its last heartbeat
// keeps moving.
func TestWorkerRowFollowsHeartbeats(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.HeartbeatTimeout = 2 * time.Second }})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "row", Caps: []string{"p"}, Slots: 2, Exts: ackExts})
	w.dispatch()
	w.hold(id)
	w.startHeartbeats(30 * time.Millisecond)
	eventually(t, waitFor, func() (bool, string) {
		row, _ := e.workerRow("row")
		return slices.Equal(row.ActiveJobIDs, []int64{id}) && row.BusySlots == 1, fmt.Sprintf("row %+v", row)
	})
	// The job runs for a while (past the first second of the
	// registration, when every heartbeat is recorded anyway).
	time.Sleep(1200 * time.Millisecond)
	w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
	w.release(id)
	w.expect(protocol.OpAck, id)
	eventually(t, waitFor, func() (bool, string) {
		row, _ := e.workerRow("row")
		return len(row.ActiveJobIDs) == 0 && row.BusySlots == 0 && row.Status == store.WorkerActive,
			fmt.Sprintf("row after the conclusion: %+v", row)
	})
	row, _ := e.workerRow("row")
	first := row.LastHeartbeat
	eventually(t, waitFor, func() (bool, string) {
		row, _ := e.workerRow("row")
		return row.LastHeartbeat.After(first.Add(200 * time.Millisecond)),
			fmt.Sprintf("last heartbeat of an idle, heartbeating worker stuck at %v", row.LastHeartbeat)
	})
}

func TestDrainingWorkerGetsNoJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	w := e.worker(workerOpts{ID: "d", Caps: []string{"p"}, Slots: 4})
	e.waitRegistered("d")
	w.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerDraining, Slots: 4})
	eventually(t, waitFor, func() (bool, string) {
		info, _ := e.info("d")
		return info.Draining, "not draining"
	})
	id := e.job("p")
	w.expectNone(protocol.OpDispatch, quiet)
	if row, _ := e.workerRow("d"); row.Status != store.WorkerDraining {
		t.Errorf("row status %s, want DRAINING", row.Status)
	}
	// Back to work: the job goes out.
	w.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerIdle, Slots: 4})
	if got, _ := w.dispatch(); got != id {
		t.Fatalf("got %d, want %d", got, id)
	}
}

// A plain v4 worker reports its job in current_job_id; that keeps the lease
// too.
func TestCurrentJobIDExtendsLease(t *testing.T) {
	t.Parallel()
	const lease = 400 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.Lease = lease }})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "v4", Caps: []string{"p"}})
	w.dispatch()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(40 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				cur := id
				m, _ := protocol.NewMessage(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerBusy, CurrentJobID: &cur})
				frames, _ := protocol.Encode(m)
				_ = w.sock.Send(zmqMsg(frames))
			}
		}
	}()
	time.Sleep(4 * lease)
	close(stop)
	<-done
	if j := e.get(id); j.Status != store.StatusRunning || j.Attempt != 1 {
		t.Fatalf("job %s attempt %d after %s of current_job_id heartbeats", j.Status, j.Attempt, 4*lease)
	}
	if got := val(t, e.s.Metrics().LeasesExpired); got != 0 {
		t.Errorf("leases_expired_total = %v", got)
	}
	// Without them the lease runs out.
	e.waitMetric("leases_expired_total", e.s.Metrics().LeasesExpired, 1)
}

// Slots reported in a heartbeat change the worker's capacity.
func TestHeartbeatSlotsChangeCapacity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	for range 3 {
		e.job("p")
	}
	w := e.worker(workerOpts{ID: "grow", Caps: []string{"p"}, Slots: 1, Exts: []string{protocol.ExtSlots}})
	w.dispatch()
	w.expectNone(protocol.OpDispatch, quiet)
	w.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerAlive, Slots: 3, FreeSlots: 2})
	w.dispatch()
	w.dispatch()
	if info, _ := e.info("grow"); info.Slots != 3 || len(info.Jobs) != 3 {
		t.Errorf("worker info %+v", info)
	}
	eventually(t, waitFor, func() (bool, string) {
		row, _ := e.workerRow("grow")
		return row.Slots == 3, fmt.Sprintf("row slots %d", row.Slots)
	})
}

// An evicted worker that identifies again is a worker like any other.
func TestEvictedWorkerComesBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.HeartbeatTimeout = 500 * time.Millisecond }})
	e.plugin("p")
	w := e.worker(workerOpts{ID: "lazarus", Caps: []string{"p"}, Exts: []string{protocol.ExtReidentify}})
	e.waitMetric("workers_cleaned_up_total", e.s.Metrics().WorkersCleanedUp, 1)
	w.heartbeat()
	w.expect(protocol.OpErr, 0)
	w.identify(workerOpts{ID: "lazarus", Caps: []string{"p"}})
	w.startHeartbeats(40 * time.Millisecond)
	id := e.job("p")
	if got, _ := w.dispatch(); got != id {
		t.Fatalf("got %d, want %d", got, id)
	}
	if row, _ := e.workerRow("lazarus"); row.Status != store.WorkerActive {
		t.Errorf("row %+v", row)
	}
}
