package sentinel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// worker is one registered DEALER peer. Only the loop goroutine touches it,
// except out, which its sender goroutine drains.
type worker struct {
	key      string // routeKey
	identity []byte
	r        *routerSock
	id       string // worker_id: owner of its leases
	caps     []string
	slots    int
	exts     map[string]bool
	hostname string
	pid      int
	draining bool
	since    time.Time
	lastSeen time.Time
	// quiet is set while the worker has been silent for longer than a
	// lease: it gets no new job until it reports again.
	quiet bool
	jobs  map[int64]*running // dispatched and not concluded
	// envs are the plugin environments it has (ExtPrepareEnv); preparing
	// those it was asked to build, and when.
	envs      map[string]bool
	preparing map[string]time.Time
	aborted   map[int64]time.Time // ABORTs sent for jobs it no longer owns

	// What its cf_worker_node row shows, as of the last saveWorker.
	savedAt       time.Time
	savedJobs     []int64
	savedSlots    int
	savedDraining bool

	out  chan zmq4.Msg
	quit chan struct{}
}

type running struct {
	attempt    int64
	plugin     string
	dispatched time.Time
}

func (w *worker) free() int {
	if w.draining || w.quiet {
		return 0
	}
	return max(0, w.slots-len(w.jobs))
}

func routeKey(r *routerSock, identity []byte) string {
	return fmt.Sprintf("%d/%x", r.idx, identity)
}

// defaultWorkerID is the original's fallback: worker-<first 4 bytes of sha256(identity)>.
func defaultWorkerID(identity []byte) string {
	sum := sha256.Sum256(identity)
	return "worker-" + hex.EncodeToString(sum[:4])
}

// register handles IDENTIFY: a new worker, a re-IDENTIFY on the same
// connection, or a known worker_id back on a new connection (its jobs and
// leases carry over).
func (s *Sentinel) register(ctx context.Context, r *routerSock, identity []byte, p *protocol.IdentifyPayload) {
	key := routeKey(r, identity)
	id := p.WorkerID
	if id == "" {
		id = defaultWorkerID(identity)
	}
	now := time.Now()
	w := s.workers[key]
	if w != nil && w.id != id {
		// Same connection, new name: treat as a new worker.
		s.evict(ctx, w, "re-identified as "+id, store.WorkerGone)
		w = nil
	}
	if old := s.byID[id]; old != nil && old != w {
		// The worker reconnected: keep its jobs, retire the old route.
		if w == nil {
			w = &worker{jobs: old.jobs, since: old.since}
		} else {
			for jid, rj := range old.jobs {
				w.jobs[jid] = rj
			}
		}
		s.dropRoute(old)
		s.log.Info("worker reconnected", "worker", id, "jobs", len(w.jobs))
	}
	if w == nil {
		w = &worker{jobs: map[int64]*running{}, since: now}
	}
	if w.out == nil {
		w.out = make(chan zmq4.Msg, s.cfg.SendQueue)
		w.quit = make(chan struct{})
		go s.sender(r, w.out, w.quit)
		s.order = append(s.order, key)
	}
	w.key, w.identity, w.r, w.id = key, slices.Clone(identity), r, id
	w.caps = slices.Clone(p.Capabilities)
	w.slots = 1 // the original's one-job-at-a-time, for workers that do not say
	if p.Slots > 0 {
		w.slots = p.Slots
	}
	w.exts = map[string]bool{}
	for _, e := range p.ProtocolExtensions {
		w.exts[e] = true
	}
	w.hostname, w.pid = p.Hostname, p.PID
	setEnvs(w, p.Envs)
	w.preparing = nil
	w.draining = false
	w.lastSeen = now
	s.workers[key] = w
	s.byID[id] = w
	s.metrics.WorkersRegistered.Inc()
	s.log.Info("worker registered", "worker", id, "endpoint", r.endpoint, "slots", w.slots,
		"capabilities", strings.Join(w.caps, ","), "host", w.hostname, "pid", w.pid)
	if len(w.caps) == 0 {
		s.log.Warn("worker has no capabilities and will get no jobs", "worker", id)
	}
	s.saveWorker(ctx, w, store.WorkerActive, "")
	s.updateGauges()
}

// dropRoute forgets w's connection without touching its jobs.
func (s *Sentinel) dropRoute(w *worker) {
	delete(s.workers, w.key)
	if s.byID[w.id] == w {
		delete(s.byID, w.id)
	}
	if i := slices.Index(s.order, w.key); i >= 0 {
		s.order = slices.Delete(s.order, i, i+1)
	}
	if w.quit != nil {
		close(w.quit)
		w.quit, w.out = nil, nil
	}
}

// evict removes w and requeues (or fails, past the retry limit) its jobs.
func (s *Sentinel) evict(ctx context.Context, w *worker, reason, status string) {
	// CONCLUDEs already received from it count before its jobs are released.
	s.flushConcludes(ctx)
	s.dropRoute(w)
	trs, err := s.st.ReleaseWorker(ctx, w.id)
	if err != nil {
		s.metrics.DBErrors.Inc()
		s.log.Error("could not release the jobs of an evicted worker; the reaper will requeue them when their leases expire",
			"worker", w.id, "error", err)
	}
	s.countTransitions(trs)
	for _, tr := range trs {
		s.log.Warn(fmt.Sprintf("[Job %d] worker %s was evicted (%s); job is now %s", tr.ID, w.id, reason, tr.To),
			"job_id", tr.ID, "attempt", tr.Attempt)
	}
	s.saveWorker(ctx, w, status, reason)
	s.log.Warn("worker evicted", "worker", w.id, "reason", reason, "jobs_released", len(trs))
	s.updateGauges()
}

// evictSilent evicts workers silent past HeartbeatTimeout, and stops
// dispatching to those silent for longer than a lease.
func (s *Sentinel) evictSilent(ctx context.Context) {
	now := time.Now()
	cutoff := now.Add(-s.cfg.HeartbeatTimeout)
	for _, key := range slices.Clone(s.order) {
		w := s.workers[key]
		if w == nil {
			continue
		}
		if w.lastSeen.Before(cutoff) {
			s.metrics.WorkersCleanedUp.Inc()
			s.evict(ctx, w, fmt.Sprintf("silent for %s", now.Sub(w.lastSeen).Round(time.Second)), store.WorkerEvicted)
			continue
		}
		s.checkQuiet(w, now)
	}
}

// checkQuiet marks w quiet once it has been silent for longer than a lease
// (a live worker heartbeats and answers probes well within one), and not
// quiet when it reports again. A quiet worker, stopped or partitioned, gets
// no new job: it would only sit on it until the lease expires.
func (s *Sentinel) checkQuiet(w *worker, now time.Time) {
	silent := now.Sub(w.lastSeen)
	switch quiet := silent > s.cfg.Lease; {
	case quiet && !w.quiet:
		w.quiet = true
		s.log.Warn("worker is silent for longer than a lease: no new jobs go to it until it reports again",
			"worker", w.id, "silent", silent.Round(time.Millisecond), "lease", s.cfg.Lease)
	case !quiet && w.quiet:
		w.quiet = false
		s.log.Info("worker reports again: jobs go to it", "worker", w.id)
	}
}

// send queues m for w; a full queue evicts w (it stopped reading).
func (s *Sentinel) send(ctx context.Context, w *worker, m protocol.Message) bool {
	if w.out == nil {
		// Already dropped (e.g. evicted earlier in the same burst): a nil
		// channel would look full and evict it, and count it, again.
		return false
	}
	frames, err := protocol.EncodeRouter(w.identity, m)
	if err != nil {
		s.log.Error("encode failed", "opcode", m.OpCode, "error", err)
		return false
	}
	select {
	case w.out <- zmq4.NewMsgFrom(frames...):
		s.metrics.MessagesSent.Inc()
		return true
	default:
		s.metrics.SendQueueOverflows.Inc()
		s.metrics.WorkersCleanedUp.Inc()
		s.evict(ctx, w, fmt.Sprintf("send queue full (%d messages): it is not reading", cap(w.out)), store.WorkerEvicted)
		return false
	}
}

// sendTo answers a peer that is not (or not yet) a registered worker.
func (s *Sentinel) sendTo(r *routerSock, identity []byte, m protocol.Message) {
	frames, err := protocol.EncodeRouter(identity, m)
	if err != nil {
		s.log.Error("encode failed", "opcode", m.OpCode, "error", err)
		return
	}
	// The transport queues the bytes (bounded per connection), so this
	// does not block on a slow peer.
	if err := r.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		s.log.Debug("send failed", "error", err)
		return
	}
	s.metrics.MessagesSent.Inc()
}

// sender drains one worker's queue into its ROUTER.
func (s *Sentinel) sender(r *routerSock, out <-chan zmq4.Msg, quit <-chan struct{}) {
	for {
		select {
		case <-quit:
			return
		case m := <-out:
			if err := r.sock.Send(m); err != nil {
				s.log.Debug("send to worker failed", "error", err)
			}
		}
	}
}

// probe sends each worker a header-only HEARTBEAT: it answers with its
// status, and it learns that the sentinel is alive.
func (s *Sentinel) probe() {
	m, _ := protocol.NewMessage(protocol.OpHeartbeat, 0, nil)
	for _, key := range slices.Clone(s.order) {
		if w := s.workers[key]; w != nil {
			s.send(context.Background(), w, m)
		}
	}
}

func (s *Sentinel) saveWorker(ctx context.Context, w *worker, status, reason string) {
	rec := store.WorkerRecord{
		WorkerID: w.id, Hostname: w.hostname, PID: w.pid, Endpoint: w.r.endpoint,
		Capabilities: w.caps, Slots: w.slots, BusySlots: len(w.jobs), ActiveJobIDs: sortedKeys(w.jobs),
		Status: status, StatusReason: reason, StartedAt: w.since, LastHeartbeat: w.lastSeen,
	}
	if w.draining && status == store.WorkerActive {
		rec.Status = store.WorkerDraining
	}
	if err := s.st.UpsertWorker(ctx, rec); err != nil {
		s.metrics.DBErrors.Inc()
		s.log.Warn("could not record the worker", "worker", w.id, "error", err)
		return
	}
	w.savedAt, w.savedJobs, w.savedSlots, w.savedDraining = time.Now(), rec.ActiveJobIDs, w.slots, w.draining
}

// refreshWorker records w after a heartbeat when its row is out of date: its
// jobs, slots or draining state changed, or the row's last heartbeat is
// older than a quarter of the heartbeat timeout. (Recording only busy
// workers left an idle worker's row listing its finished jobs and an ever
// older last heartbeat.)
func (s *Sentinel) refreshWorker(ctx context.Context, w *worker) {
	if w.out == nil {
		return // evicted while its heartbeat was handled: the row says so
	}
	if w.draining == w.savedDraining && w.slots == w.savedSlots && slices.Equal(sortedKeys(w.jobs), w.savedJobs) &&
		time.Since(w.savedAt) < s.cfg.HeartbeatTimeout/4 {
		return
	}
	s.saveWorker(ctx, w, store.WorkerActive, "")
}

func (s *Sentinel) updateGauges() {
	var slots, busy int
	for _, w := range s.workers {
		slots += w.slots
		busy += len(w.jobs)
	}
	s.metrics.Workers.Set(float64(len(s.workers)))
	s.metrics.Slots.Set(float64(slots))
	s.metrics.BusySlots.Set(float64(busy))
}

// shutdown records that the workers lost their sentinel.
func (s *Sentinel) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, key := range slices.Clone(s.order) {
		if w := s.workers[key]; w != nil {
			s.dropRoute(w)
		}
	}
	if _, err := s.st.MarkWorkersGone(ctx, "sentinel stopped"); err != nil {
		s.log.Warn("could not update the worker table", "error", err)
	}
	s.log.Info("sentinel stopped")
}

// WorkerInfo describes a registered worker.
type WorkerInfo struct {
	ID, Hostname, Endpoint string
	PID                    int
	Capabilities           []string
	Slots                  int
	Jobs                   []int64
	Draining               bool
	LastSeen               time.Time
}

// Workers returns the registered workers, by id. It returns nil if the
// sentinel is not running.
func (s *Sentinel) Workers(ctx context.Context) []WorkerInfo {
	var out []WorkerInfo
	s.do(ctx, func() {
		for _, w := range s.workers {
			out = append(out, WorkerInfo{ID: w.id, Hostname: w.hostname, Endpoint: w.r.endpoint, PID: w.pid,
				Capabilities: slices.Clone(w.caps), Slots: w.slots, Jobs: sortedKeys(w.jobs),
				Draining: w.draining, LastSeen: w.lastSeen})
		}
	})
	slices.SortFunc(out, func(a, b WorkerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// zmqLogger routes zmq4's internal log lines to slog at debug level.
func zmqLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}
