package sentinel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/internal/signing"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// handle processes one received message on the loop goroutine.
func (s *Sentinel) handle(ctx context.Context, in inMsg) {
	s.metrics.MessagesReceived.Inc()
	identity, m, err := s.dec.DecodeRouter(in.msg.Frames)
	if err != nil {
		s.metrics.ProtocolErrors.Inc()
		s.log.Warn("dropped a malformed message", "endpoint", in.r.endpoint, "frames", len(in.msg.Frames), "error", err)
		if identity != nil {
			s.replyErr(in.r, identity, 0, "malformed message: "+err.Error())
		}
		return
	}
	w := s.workers[routeKey(in.r, identity)]
	if w != nil {
		w.lastSeen = time.Now()
		s.checkQuiet(w, w.lastSeen)
	}
	switch m.OpCode {
	case protocol.OpIdentify:
		var p protocol.IdentifyPayload
		if !s.decodePayload(in.r, identity, m, &p) {
			return
		}
		s.register(ctx, in.r, identity, &p)
	case protocol.OpHeartbeat:
		if w == nil {
			s.askIdentify(in.r, identity)
			return
		}
		if len(m.Payload) == 0 {
			return // a probe from the worker: being alive is the answer
		}
		var p protocol.HeartbeatPayload
		if !s.decodePayload(in.r, identity, m, &p) {
			return
		}
		s.heartbeat(ctx, w, &p)
	case protocol.OpConclude:
		var rc protocol.JobReceipt
		if !s.decodePayload(in.r, identity, m, &rc) {
			return
		}
		s.conclude(ctx, in.r, identity, w, int64(m.JobID), &rc)
		if w == nil {
			s.askIdentify(in.r, identity)
		}
	case protocol.OpErr:
		var p protocol.ErrorPayload
		if err := m.Unmarshal(&p); err != nil {
			p.Message = string(m.Payload)
		}
		if m.JobID == 0 {
			s.log.Warn("worker reported an error", "worker", workerName(w, identity), "message", p.Message)
			return
		}
		// The original failed the job on an ERR carrying its id.
		rc := protocol.JobReceipt{Status: protocol.StatusFailed, ErrorMessage: p.Message}
		if p.Traceback != "" {
			rc.ErrorMessage += "\n" + p.Traceback
		}
		s.conclude(ctx, in.r, identity, w, int64(m.JobID), &rc)
	case protocol.OpEnvReady:
		var p protocol.EnvReadyPayload
		if s.decodePayload(in.r, identity, m, &p) {
			s.envReady(ctx, w, &p)
		}
	case protocol.OpDeploy:
		var p protocol.DeployCommand
		if !s.decodePayload(in.r, identity, m, &p) {
			return
		}
		s.deploy(ctx, in.r, identity, &p)
	case protocol.OpReload:
		s.reload(ctx, in.r, identity, w)
	case protocol.OpAbort:
		if w != nil {
			s.metrics.ProtocolErrors.Inc()
			s.log.Warn("ignored ABORT from a worker", "worker", w.id, "job_id", m.JobID)
			return
		}
		s.abortRequest(ctx, in.r, identity, int64(m.JobID))
	default:
		s.metrics.ProtocolErrors.Inc()
		s.log.Warn("unexpected message", "opcode", m.OpCode.String(), "worker", workerName(w, identity), "job_id", m.JobID)
		s.replyErr(in.r, identity, m.JobID, fmt.Sprintf("unexpected %s message: a sentinel accepts IDENTIFY, HEARTBEAT, CONCLUDE, ERR, ENV_READY, DEPLOY, RELOAD and ABORT", m.OpCode))
	}
}

func workerName(w *worker, identity []byte) string {
	if w != nil {
		return w.id
	}
	return defaultWorkerID(identity)
}

func (s *Sentinel) decodePayload(r *routerSock, identity []byte, m protocol.Message, v any) bool {
	if err := m.Unmarshal(v); err != nil {
		s.metrics.ProtocolErrors.Inc()
		s.log.Warn("dropped a message with a bad payload", "opcode", m.OpCode.String(), "job_id", m.JobID, "error", err)
		s.replyErr(r, identity, m.JobID, err.Error())
		return false
	}
	return true
}

func (s *Sentinel) replyErr(r *routerSock, identity []byte, jobID uint64, msg string) {
	m, err := protocol.NewMessage(protocol.OpErr, jobID, protocol.ErrorPayload{Message: msg})
	if err == nil {
		s.sendTo(r, identity, m)
	}
}

// askIdentify tells an unknown peer to register (after a sentinel restart
// or an eviction); workers listing ExtReidentify do so.
func (s *Sentinel) askIdentify(r *routerSock, identity []byte) {
	s.replyErr(r, identity, 0, protocol.ReidentifyPrefix+" (this sentinel does not know this connection)")
}

// heartbeat records a worker's status and extends the leases of the jobs it
// reports; it ABORTs jobs the worker runs but no longer owns.
func (s *Sentinel) heartbeat(ctx context.Context, w *worker, p *protocol.HeartbeatPayload) {
	wasDraining := w.draining
	w.draining = p.Status == protocol.WorkerDraining
	if p.Slots > 0 {
		w.slots = p.Slots
	}
	if w.exts[protocol.ExtPrepareEnv] {
		setEnvs(w, p.Envs)
	}
	ids := p.ActiveJobIDs
	if ids == nil && p.CurrentJobID != nil {
		ids = []int64{*p.CurrentJobID}
	}
	for _, id := range ids {
		rj := w.jobs[id]
		if rj == nil {
			// Not dispatched through this registration: adopt it if the
			// queue says this worker still holds the lease (the sentinel
			// restarted), else the worker runs a job that moved on.
			j, err := s.st.Get(ctx, id)
			if err != nil || j.Status != store.StatusRunning || j.LeaseOwner != w.id {
				s.abortStale(ctx, w, id, "the job is no longer leased to this worker")
				continue
			}
			rj = &running{attempt: j.Attempt, plugin: j.PluginName, dispatched: time.Now()}
			w.jobs[id] = rj
			s.log.Info(fmt.Sprintf("[Job %d] adopted from worker %s (attempt %d)", id, w.id, j.Attempt))
		}
		if _, err := s.st.ExtendLease(ctx, id, rj.attempt, w.id, s.cfg.Lease); err != nil {
			if errors.Is(err, store.ErrStaleAttempt) {
				delete(w.jobs, id)
				s.abortStale(ctx, w, id, "its lease expired and the job was requeued")
				continue
			}
			s.metrics.DBErrors.Inc()
			s.log.Warn(fmt.Sprintf("[Job %d] could not extend the lease", id), "error", err)
		}
	}
	s.refreshWorker(ctx, w)
	if w.draining && !wasDraining {
		s.log.Info("worker is draining; no new jobs go to it", "worker", w.id, "jobs", len(w.jobs))
	}
	s.updateGauges()
}

// abortStale tells w to stop a job it no longer owns: its output would be
// rejected anyway.
func (s *Sentinel) abortStale(ctx context.Context, w *worker, id int64, why string) {
	// Heartbeats queued while a worker was stopped arrive in a burst: one
	// ABORT per job and few seconds is enough.
	if at, ok := w.aborted[id]; ok && time.Since(at) < 5*time.Second {
		return
	}
	if w.aborted == nil || len(w.aborted) > 1024 {
		w.aborted = map[int64]time.Time{}
	}
	w.aborted[id] = time.Now()
	s.log.Warn(fmt.Sprintf("[Job %d] worker %s still runs it, but %s: sending ABORT", id, w.id, why))
	m, _ := protocol.NewMessage(protocol.OpAbort, uint64(id), nil)
	s.send(ctx, w, m)
}

// conclude records a CONCLUDE (or an ERR about a job), fenced by attempt.
func (s *Sentinel) conclude(ctx context.Context, r *routerSock, identity []byte, w *worker, id int64, rc *protocol.JobReceipt) {
	if id <= 0 {
		s.metrics.ProtocolErrors.Inc()
		s.log.Warn("CONCLUDE without a job id", "worker", workerName(w, identity))
		return
	}
	attempt := rc.Attempt
	var rj *running
	if w != nil {
		rj = w.jobs[id]
	}
	if attempt == 0 && rj != nil {
		attempt = rj.attempt
	}
	if attempt == 0 {
		// A v4 worker that does not echo attempts, unknown to this
		// registration: accept it only if it holds the lease.
		if j, err := s.st.Get(ctx, id); err == nil && j.Status == store.StatusRunning && w != nil && j.LeaseOwner == w.id {
			attempt = j.Attempt
		}
	}
	out := store.Outcome{Status: store.ReceiptStatus(rc.Status), Error: rc.ErrorMessage,
		Metrics: rc.Metrics, Artifacts: rc.Artifacts}
	if rc.Status == protocol.StatusAborted && rc.Requeue {
		out.Requeue = true
	}
	if rc.Status == protocol.StatusFailed && rc.Retriable {
		out.Retriable = true
	}
	// Recorded with the other CONCLUDEs received in the same pass, in one
	// transaction (flushConcludes), before any ACK is sent.
	s.pending = append(s.pending, pendingConclude{r: r, identity: identity, w: w, id: id, attempt: attempt,
		rj: rj, rc: rc, out: out})
}

// pendingConclude is a CONCLUDE waiting for flushConcludes.
type pendingConclude struct {
	r        *routerSock
	identity []byte
	w        *worker
	id       int64
	attempt  int64
	rj       *running
	rc       *protocol.JobReceipt
	out      store.Outcome
}

// flushConcludes records the pending CONCLUDEs in one transaction (one
// fsync however many arrived together), then frees slots, ACKs and logs.
func (s *Sentinel) flushConcludes(ctx context.Context) {
	if len(s.pending) == 0 {
		return
	}
	batch := s.pending
	s.pending = nil
	start := time.Now()
	cs := make([]store.Conclusion, len(batch))
	for i, p := range batch {
		cs[i] = store.Conclusion{ID: p.id, Attempt: p.attempt, Outcome: p.out}
	}
	trs, errs := s.st.ConcludeMany(ctx, cs)
	s.metrics.ConcludeTimeMicros.Add(float64(time.Since(start).Microseconds()))
	for i, p := range batch {
		s.concluded(ctx, p, trs[i], errs[i])
	}
}

// concluded finishes one CONCLUDE once its database write is done.
func (s *Sentinel) concluded(ctx context.Context, p pendingConclude, tr store.Transition, err error) {
	w, rj, id, attempt, rc := p.w, p.rj, p.id, p.attempt, p.rc
	// Forget the job only if this CONCLUDE was about the attempt w holds: a
	// late CONCLUDE of an earlier attempt must not free the slot of the
	// attempt the worker runs now.
	if w != nil && rj != nil && rj.attempt == attempt && w.jobs[id] == rj {
		delete(w.jobs, id)
	}
	stale := errors.Is(err, store.ErrStaleAttempt) || errors.Is(err, store.ErrJobNotFound)
	// ACK only what is settled: after a database error the worker keeps the
	// CONCLUDE and sends it again.
	if w != nil && w.exts[protocol.ExtConcludeAck] && (err == nil || stale) {
		ack, _ := protocol.NewMessage(protocol.OpAck, uint64(id), protocol.DeployResponse{
			Success: err == nil || errors.Is(err, store.ErrStaleAttempt), Message: ackMessage(err), Attempt: attempt})
		s.send(ctx, w, ack)
	}
	switch {
	case stale:
		s.metrics.StaleConclusions.Inc()
		s.log.Warn(fmt.Sprintf("[Job %d] rejected a late CONCLUDE %s from worker %s for attempt %d: the job was re-dispatched or already concluded; its output is ignored",
			id, rc.Status, workerName(w, p.identity), attempt))
		return
	case err != nil:
		s.metrics.DBErrors.Inc()
		s.log.Error(fmt.Sprintf("[Job %d] could not record CONCLUDE %s; the worker will send it again, or the lease expires and the job is retried", id, rc.Status),
			"error", err)
		return
	}
	switch rc.Status {
	case protocol.StatusRejected:
		s.metrics.JobsRejected.Inc()
	case protocol.StatusAborted:
		s.metrics.JobsAborted.Inc()
	}
	s.countTransitions([]store.Transition{tr})
	if rj != nil {
		s.metrics.JobDuration.Observe(time.Since(rj.dispatched).Seconds())
		if msg := s.loops.concluded(rj.plugin, id, rc, time.Now()); msg != "" {
			s.log.Warn(msg, "plugin", rj.plugin)
		}
		s.metrics.CrashLooping.Set(float64(s.loops.looping()))
	}
	attrs := []any{"job_id", id, "worker", workerName(w, p.identity), "attempt", attempt, "status", tr.To}
	switch tr.To {
	case store.StatusCompleted:
		s.log.Info("job completed", append(attrs, "rows", rc.Metrics["rows"])...)
	case store.StatusQueued:
		s.log.Info(fmt.Sprintf("[Job %d] requeued after %s (retry %d)", id, rc.Status, tr.RetryCount), attrs...)
	default:
		s.log.Warn(fmt.Sprintf("[Job %d] failed: %s", id, firstLine(tr.Error)), attrs...)
	}
	if w != nil {
		s.updateGauges()
	}
}

func ackMessage(err error) string {
	if err == nil {
		return "recorded"
	}
	return err.Error()
}

// countTransitions updates the counters for status changes.
func (s *Sentinel) countTransitions(trs []store.Transition) {
	for _, tr := range trs {
		switch tr.To {
		case store.StatusCompleted:
			s.metrics.JobsCompleted.Inc()
		case store.StatusFailed:
			s.metrics.JobsFailed.Inc()
		case store.StatusQueued:
			s.metrics.JobsRequeued.Inc()
		}
	}
}

// reap requeues jobs whose lease expired and ABORTs them on workers that
// still hold them.
func (s *Sentinel) reap(ctx context.Context) {
	trs, err := s.st.ReapExpired(ctx, time.Now())
	if err != nil {
		s.metrics.DBErrors.Inc()
		s.log.Error("reaping expired leases failed", "error", err)
		return
	}
	s.countTransitions(trs)
	for _, tr := range trs {
		s.metrics.LeasesExpired.Inc()
		s.log.Warn(fmt.Sprintf("[Job %d] lease of worker %s (attempt %d) expired; job is now %s", tr.ID, tr.Owner, tr.Attempt, tr.To))
		if w := s.byID[tr.Owner]; w != nil {
			if rj := w.jobs[tr.ID]; rj != nil && rj.attempt == tr.Attempt {
				delete(w.jobs, tr.ID)
				s.abortStale(ctx, w, tr.ID, "its lease expired")
			}
		}
	}
	if len(trs) > 0 {
		s.updateGauges()
	}
}

// deploy handles DEPLOY: verify artifact_hash = sha256(source ‖ lockfile),
// then store the manifest as ACTIVE (superseding older ones) and ACK.
func (s *Sentinel) deploy(ctx context.Context, r *routerSock, identity []byte, p *protocol.DeployCommand) {
	fail := func(msg string) {
		s.metrics.Deploys.WithLabelValues("error").Inc()
		s.log.Warn("DEPLOY refused", "plugin", p.PluginName, "version", p.Version, "reason", msg)
		s.replyErr(r, identity, 0, "deploy "+p.PluginName+": "+msg)
	}
	if !validPluginName(p.PluginName) {
		fail("plugin_name must be 1-100 characters of letters, digits, '_', '-' or '.'")
		return
	}
	if p.SourceCode == "" {
		fail("source_code is empty")
		return
	}
	if want := sha256Hex(p.SourceCode, p.LockfileContent); !strings.EqualFold(p.ArtifactHash, want) {
		fail(fmt.Sprintf("artifact_hash %q does not match sha256(source_code + lockfile_content) = %s", p.ArtifactHash, want))
		return
	}
	envHash := p.EnvHash
	if p.LockfileContent == "" {
		envHash = ""
	} else if want := sha256Hex(p.LockfileContent); !strings.EqualFold(envHash, want) {
		fail(fmt.Sprintf("env_hash %q does not match sha256(lockfile_content) = %s", envHash, want))
		return
	}
	if manifest.IsManifest(p.SourceCode) {
		// A binary plugin: its manifest must be valid, and its artifact, when
		// this host can see it, must match the SHA-256 the manifest names.
		m, err := manifest.Parse([]byte(p.SourceCode))
		if err != nil {
			fail("manifest: " + err.Error())
			return
		}
		if m.SHA256 == "" {
			fail("the manifest has no sha256 of its artifact")
			return
		}
		if _, err := os.Stat(m.Artifact); err == nil {
			if err := m.Verify(); err != nil {
				fail(err.Error())
				return
			}
		}
	}
	publisher, ok := s.checkPublisher(ctx, p, fail)
	if !ok {
		return
	}
	id, err := s.st.AddPlugin(ctx, store.PluginSpec{Name: p.PluginName, Version: p.Version, SourceCode: p.SourceCode,
		EnvHash: envHash, ArtifactHash: strings.ToLower(p.ArtifactHash), Lockfile: p.LockfileContent})
	if err != nil {
		s.metrics.DBErrors.Inc()
		fail(err.Error())
		return
	}
	wired, err := s.wire(ctx, p)
	if err != nil {
		s.metrics.DBErrors.Inc()
		fail("stored as manifest " + strconv.FormatInt(id, 10) + ", but wiring its routes failed: " + err.Error())
		return
	}
	s.forgetPlugins()
	s.envCache = nil
	s.metrics.Deploys.WithLabelValues("ok").Inc()
	s.log.Info("plugin deployed", "plugin", p.PluginName, "version", p.Version, "manifest_id", id, "publisher", publisher)
	msg := fmt.Sprintf("deployed %s %s as manifest %d (ACTIVE)", p.PluginName, p.Version, id)
	if wired != "" {
		msg += "; " + wired
	}
	m, _ := protocol.NewMessage(protocol.OpAck, 0, protocol.DeployResponse{Success: true, Message: msg, PluginID: &id})
	s.sendTo(r, identity, m)
	s.Wake()
}

// checkPublisher verifies p's signature and that its key is trusted (or
// trusts it on first use). It returns the publisher's name.
func (s *Sentinel) checkPublisher(ctx context.Context, p *protocol.DeployCommand, fail func(string)) (string, bool) {
	pub, err := signing.Verify(p)
	switch {
	case errors.Is(err, signing.ErrUnsigned):
		if s.cfg.AllowUnsigned {
			return p.PublisherName + " (unsigned)", true
		}
		fail("the DEPLOY is not signed: publish with `casparian publish` and a key from `casparian keys generate` " +
			"(or start the sentinel with --allow-unsigned-deploys)")
		return "", false
	case err != nil:
		who := "an unparsable key"
		if pub != nil {
			who = "key " + signing.Fingerprint(pub)
		}
		fail(fmt.Sprintf("bad signature (%s, publisher %q): %v; the DEPLOY was altered after it was signed, or signed with another key",
			who, p.PublisherName, err))
		return "", false
	}
	fp := signing.Fingerprint(pub)
	pr, known, err := s.st.TrustedPublisher(ctx, p.PublicKey)
	if err != nil {
		s.metrics.DBErrors.Inc()
		fail(err.Error())
		return "", false
	}
	if !known {
		if !s.cfg.TrustOnFirstUse {
			fail(fmt.Sprintf("unknown publisher key %s (publisher %q): trust it first with `casparian keys trust --name %s PUBLIC_KEY` "+
				"on the sentinel's database (or run the sentinel with --trust-on-first-use)", fp, p.PublisherName, orUnnamed(p.PublisherName)))
			return "", false
		}
		id, err := s.st.TrustPublisher(ctx, orUnnamed(p.PublisherName), p.PublisherEmail, p.PublicKey)
		if err != nil {
			s.metrics.DBErrors.Inc()
			fail(err.Error())
			return "", false
		}
		s.log.Warn("trusting a new publisher key on first use", "publisher", p.PublisherName, "key", fp, "publisher_id", id)
		pr = store.Publisher{ID: id, Name: orUnnamed(p.PublisherName)}
	}
	_ = s.st.TouchPublisher(ctx, pr.ID)
	return pr.Name + " (" + fp + ")", true
}

func orUnnamed(s string) string {
	if s == "" {
		return "unnamed"
	}
	return s
}

// wire records a DEPLOY's routing: its pattern as the rule pattern →
// auto_<plugin>, the plugin's subscriptions, and its sinks (topics already
// configured keep their URI). It describes what it added.
func (s *Sentinel) wire(ctx context.Context, p *protocol.DeployCommand) (string, error) {
	var tags, done []string
	if p.Pattern != "" {
		tag := "auto_" + p.PluginName
		if len(tag) > 50 {
			tag = tag[:50]
		}
		if err := s.st.EnsureRoute(ctx, p.Pattern, tag); err != nil {
			return "", err
		}
		tags = append(tags, tag)
		done = append(done, fmt.Sprintf("files matching %s are tagged %s", p.Pattern, tag))
	}
	tags = append(tags, p.Subscriptions...)
	if len(tags) > 0 {
		if err := s.st.Subscribe(ctx, p.PluginName, tags); err != nil {
			return "", err
		}
		done = append(done, "subscribed to "+strings.Join(tags, ","))
	}
	if len(p.Sinks) > 0 {
		have, err := s.st.ConfiguredSinks(ctx, p.PluginName)
		if err != nil {
			return "", err
		}
		for _, k := range p.Sinks {
			if slices.ContainsFunc(have, func(h store.Sink) bool { return h.Topic == k.Topic }) {
				continue
			}
			if err := s.st.AddSink(ctx, p.PluginName, store.Sink{Topic: k.Topic, URI: k.URI}); err != nil {
				return "", err
			}
			done = append(done, fmt.Sprintf("topic %s -> %s", k.Topic, k.URI))
		}
	}
	return strings.Join(done, "; "), nil
}

func validPluginName(n string) bool {
	if n == "" || len(n) > 100 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// reload handles RELOAD from an operator: it clears the plugin cache (so
// manifests and sinks are read again from SQLite), broadcasts the RELOAD to
// the workers (as the original's Python sentinel did) and looks at the
// queue again.
func (s *Sentinel) reload(ctx context.Context, r *routerSock, identity []byte, w *worker) {
	if w != nil {
		s.log.Info("ignored RELOAD from a worker", "worker", w.id)
		return
	}
	s.forgetPlugins()
	m, _ := protocol.NewMessage(protocol.OpReload, 0, nil)
	for _, key := range slices.Clone(s.order) {
		if ww := s.workers[key]; ww != nil {
			s.send(ctx, ww, m)
		}
	}
	s.log.Info("RELOAD: plugin cache cleared; broadcast to workers", "workers", len(s.workers))
	ack, _ := protocol.NewMessage(protocol.OpAck, 0, protocol.DeployResponse{Success: true,
		Message: fmt.Sprintf("reloaded; RELOAD sent to %d workers", len(s.workers))})
	s.sendTo(r, identity, ack)
	s.Wake()
}

// abortRequest handles ABORT from an operator peer: forward it to the
// worker running the job.
func (s *Sentinel) abortRequest(ctx context.Context, r *routerSock, identity []byte, id int64) {
	for _, w := range s.workers {
		if _, ok := w.jobs[id]; ok {
			m, _ := protocol.NewMessage(protocol.OpAbort, uint64(id), nil)
			s.send(ctx, w, m)
			s.log.Info(fmt.Sprintf("[Job %d] ABORT requested; forwarded to worker %s", id, w.id))
			ack, _ := protocol.NewMessage(protocol.OpAck, uint64(id), protocol.DeployResponse{Success: true,
				Message: fmt.Sprintf("ABORT sent to worker %s", w.id)})
			s.sendTo(r, identity, ack)
			return
		}
	}
	s.replyErr(r, identity, uint64(id), fmt.Sprintf("job %d is not running on a connected worker", id))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
