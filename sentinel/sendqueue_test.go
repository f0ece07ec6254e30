package sentinel

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// stallSender stops the sender goroutine of a registered worker, as if its
// Send were stuck: nothing drains the worker's send queue any more. (With
// the asynchronous transport a real peer that stops reading cannot do this;
// see TestStalledPeerDoesNotDelayOthers.)
func stallSender(t *testing.T, e *env, id string) {
	t.Helper()
	ok := e.s.do(e.ctx, func() {
		w := e.s.byID[id]
		if w == nil {
			t.Errorf("worker %s not registered", id)
			return
		}
		close(w.quit)                // the sender goroutine exits
		w.quit = make(chan struct{}) // closed by dropRoute later
	})
	if !ok {
		t.Fatal("sentinel not running")
	}
}

func TestSendQueueOverflowEvicts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.SendQueue = 4
		c.ProbeInterval = 10 * time.Millisecond
	}})
	e.plugin("p")
	a, b := e.job("p"), e.job("p")
	stuck := e.worker(workerOpts{ID: "stuck", Caps: []string{"p"}, Slots: 2})
	stuck.dispatch()
	stuck.dispatch()
	healthy := e.worker(workerOpts{ID: "healthy", Caps: []string{"p"}, Slots: 4, Exts: ackExts})
	healthy.startHeartbeats(20 * time.Millisecond)
	e.waitRegistered("stuck", "healthy")
	stallSender(t, e, "stuck")

	// Probes fill the stuck worker's queue within a few intervals.
	m := e.s.Metrics()
	e.waitMetric("send_queue_overflows_total", m.SendQueueOverflows, 1)
	e.waitMetric("workers_cleaned_up_total", m.WorkersCleanedUp, 1)
	eventually(t, waitFor, func() (bool, string) {
		got := e.registered()
		return slices.Equal(got, []string{"healthy"}), fmt.Sprintf("registered %v", got)
	})
	if row, _ := e.workerRow("stuck"); row.Status != store.WorkerEvicted || !strings.Contains(row.StatusReason, "send queue full") {
		t.Errorf("row of the stuck worker: %+v", row)
	}
	// Its two jobs are requeued and go to the healthy worker, as do new ones.
	c := e.job("p")
	var got []int64
	for range 3 {
		id, _ := healthy.dispatch()
		got = append(got, id)
	}
	slices.Sort(got)
	if !slices.Equal(got, []int64{a, b, c}) {
		t.Fatalf("healthy worker got %v, want %v", got, []int64{a, b, c})
	}
	for _, id := range got {
		healthy.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
		healthy.expect(protocol.OpAck, id)
	}
	for _, id := range got {
		e.waitStatus(id, store.StatusCompleted)
	}
	// Still one overflow: the evicted worker is not evicted again.
	time.Sleep(quiet)
	if got := val(t, m.SendQueueOverflows); got != 1 {
		t.Errorf("send_queue_overflows_total = %v, want 1", got)
	}
}

// One heartbeat that makes the sentinel send several messages to a worker
// whose queue is full must evict (and count) it once.
func TestOverflowInBurstCountsOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.SendQueue = 1
		c.ProbeInterval = time.Hour
	}})
	w := e.worker(workerOpts{ID: "burst", Caps: []string{"p"}})
	e.waitRegistered("burst")
	stallSender(t, e, "burst")
	// Five jobs it does not own: five ABORTs for a queue of one.
	w.hold(101, 102, 103, 104, 105)
	w.heartbeat()
	m := e.s.Metrics()
	e.waitMetric("send_queue_overflows_total", m.SendQueueOverflows, 1)
	eventually(t, waitFor, func() (bool, string) {
		return len(e.registered()) == 0, "still registered"
	})
	time.Sleep(quiet)
	if got := val(t, m.SendQueueOverflows); got != 1 {
		t.Errorf("send_queue_overflows_total = %v, want 1", got)
	}
	if got := val(t, m.WorkersCleanedUp); got != 1 {
		t.Errorf("workers_cleaned_up_total = %v, want 1", got)
	}
	// The registry says so (the rest of the heartbeat does not revive it).
	if row, _ := e.workerRow("burst"); row.Status != store.WorkerEvicted {
		t.Errorf("registry row %+v, want EVICTED", row)
	}
}

// A peer that stops reading while big DISPATCHes are queued for it: the
// sentinel's writes to it stall in the network, yet a healthy worker keeps
// getting its jobs at once.
func TestStalledPeerDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("moves tens of MiB")
	}
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.SendQueue = 4
		c.ProbeInterval = 5 * time.Millisecond
	}})
	// 512 KiB of source per DISPATCH, 12 of them: more than the socket
	// buffers of a peer that reads nothing can hold (its receive buffer is
	// 4 KiB, the kernel's send buffer at most tcp_wmem's 4 MiB).
	big := strings.Repeat("x", 512<<10)
	if _, err := e.st.AddPlugin(e.ctx, store.PluginSpec{Name: "big", SourceCode: big}); err != nil {
		t.Fatal(err)
	}
	e.plugin("small")
	const bigJobs = 12
	for range bigJobs {
		e.job("big")
	}
	stalled := dialRaw(t, e.ep("tcp"), "stalled-peer")
	stalled.send(t, protocol.OpIdentify, 0, protocol.IdentifyPayload{WorkerID: "stalled", Capabilities: []string{"big"}, Slots: bigJobs})
	// All its DISPATCHes are handed to the transport (which queues what the
	// peer does not read), or, with a transport whose sends block, its send
	// queue overflows and it is evicted.
	// (Encoding 6 MiB of JSON under -race on a loaded machine is slow.)
	m := e.s.Metrics()
	eventually(t, 3*waitFor, func() (bool, string) {
		c := e.counts()
		return c[store.StatusRunning] == bigJobs && val(t, m.JobsDispatched) == bigJobs || val(t, m.SendQueueOverflows) > 0,
			fmt.Sprintf("counts %v", c)
	})

	healthy := e.worker(workerOpts{ID: "healthy", Caps: []string{"small"}, Exts: ackExts})
	var worst time.Duration
	for range 10 {
		start := time.Now()
		id := e.job("small")
		got, _ := healthy.dispatch()
		if d := time.Since(start); d > worst {
			worst = d
		}
		if got != id {
			t.Fatalf("healthy worker got job %d, want %d", got, id)
		}
		healthy.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
		healthy.expect(protocol.OpAck, id)
	}
	if worst > 2*time.Second {
		t.Errorf("slowest DISPATCH to the healthy worker took %s", worst)
	}
	overflows := val(t, m.SendQueueOverflows)
	_, stillThere := e.info("stalled")
	t.Logf("slowest healthy DISPATCH %s; per-worker send queue overflows %v; stalled peer still registered: %v",
		worst, overflows, stillThere)
	if _, ok := e.info("healthy"); !ok {
		t.Error("the healthy worker was evicted")
	}
}

// A worker evicted in the middle of handling its heartbeat stays evicted in
// the registry.
func TestEvictedDuringHeartbeatStaysEvicted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.SendQueue = 1
		c.ProbeInterval = time.Hour
	}})
	e.plugin("p")
	fv := e.defaultFile()
	var foreign []int64
	for range 3 {
		foreign = append(foreign, e.jobWith(fv, "nobody", 0, ""))
	}
	mine := e.job("p")
	w := e.worker(workerOpts{ID: "victim", Caps: []string{"p"}})
	if got, _ := w.dispatch(); got != mine {
		t.Fatalf("got %d, want %d", got, mine)
	}
	stallSender(t, e, "victim")
	// Jobs it does not own come first: their ABORTs overflow its queue and
	// evict it; then its own job, now requeued, is found stale.
	w.hold(append(foreign, mine)...)
	w.heartbeat()
	e.waitMetric("send_queue_overflows_total", e.s.Metrics().SendQueueOverflows, 1)
	eventually(t, waitFor, func() (bool, string) {
		return len(e.registered()) == 0, "still registered"
	})
	time.Sleep(quiet)
	if row, _ := e.workerRow("victim"); row.Status != store.WorkerEvicted || len(row.ActiveJobIDs) != 0 {
		t.Errorf("registry row %+v, want EVICTED without jobs", row)
	}
	if j := e.get(mine); j.Status != store.StatusQueued || j.RetryCount != 1 {
		t.Errorf("job %s retries %d, want requeued", j.Status, j.RetryCount)
	}
}
