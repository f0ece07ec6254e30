// Package worker is the worker daemon: a ZeroMQ DEALER that registers with a
// sentinel, runs the jobs it is sent through a host.Host (up to Slots at
// once), heartbeats, reconnects when the sentinel goes away, and drains on
// shutdown. docs/OPERATIONS.md describes it from an operator's side.
package worker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/transport"
	"github.com/casparianflow/casparian/worker/envs"
)

// Defaults of Config (the original's constants where it had one).
const (
	DefaultConnect           = "tcp://127.0.0.1:5555"
	DefaultSlots             = 4
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultSentinelTimeout   = 20 * time.Second
	DefaultDrainTimeout      = 30 * time.Second
	DefaultReconnectMin      = 100 * time.Millisecond
	DefaultReconnectMax      = time.Second
)

// Config configures a Worker. Zero values take the defaults above.
type Config struct {
	// Connect is the sentinel endpoint: tcp://HOST:PORT or ipc:///PATH.
	Connect string
	// WorkerID names the worker (and owns its job leases). Default
	// HOSTNAME-PID.
	WorkerID string
	// Capabilities lists the plugin names it runs; "*" (the default) means any.
	Capabilities []string
	// Slots is how many jobs run at once. Default 4.
	Slots int
	// Host runs the jobs. Required.
	Host *host.Host
	// Logger receives the daemon's logs. nil discards them.
	Logger *slog.Logger
	// Registerer, if set, gets the worker's metrics.
	Registerer prometheus.Registerer
	// HeartbeatInterval is how often the worker reports its status (which
	// extends its jobs' leases). Default 5 s.
	HeartbeatInterval time.Duration
	// SentinelTimeout: with no message from the sentinel for that long
	// (it probes every few seconds), the worker reconnects. Default 20 s.
	SentinelTimeout time.Duration
	// DrainTimeout bounds the wait for running jobs at shutdown; jobs still
	// running then are aborted and handed back for requeue. Default 30 s.
	DrainTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// connection attempts. Defaults 100 ms and 1 s: a restarted sentinel
	// has its workers back within about a second (a failed attempt costs a
	// refused connect, so a thousand workers retrying cost little).
	ReconnectMin, ReconnectMax time.Duration
	// Secret is the shared secret the sentinel requires (ZeroMQ PLAIN, user
	// name = WorkerID); nil: no authentication.
	Secret []byte
	// TLS is the client configuration of tls:// endpoints (certificate,
	// key and the CA of the sentinel's certificate).
	TLS *tls.Config
	// Plugin turns a DISPATCH into the plugin to load. Default
	// DispatchPlugin.
	Plugin func(*protocol.DispatchCommand) (guest.Plugin, error)
	// Envs provisions plugin environments (PREPARE_ENV); nil: the worker
	// runs every Python plugin with its configured interpreter and answers
	// PREPARE_ENV with ERR.
	Envs *envs.Manager
}

func (c Config) withDefaults() Config {
	if c.Connect == "" {
		c.Connect = DefaultConnect
	}
	if c.WorkerID == "" {
		h, _ := os.Hostname()
		if h == "" {
			h = "worker"
		}
		c.WorkerID = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if c.Capabilities == nil {
		c.Capabilities = []string{"*"}
	}
	if c.Slots <= 0 {
		c.Slots = DefaultSlots
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.SentinelTimeout <= 0 {
		c.SentinelTimeout = DefaultSentinelTimeout
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = DefaultReconnectMin
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = DefaultReconnectMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Plugin == nil {
		c.Plugin = DispatchPlugin
	}
	return c
}

// DispatchPlugin is the default Config.Plugin. A source_code that is a
// plugin manifest (package host/manifest: a go-plugin executable or a WASM
// module on storage the worker shares) names the artifact, whose SHA-256 is
// checked against the manifest and the DISPATCH's artifact_hash; any other
// source_code is Python source (PythonPlugin).
func DispatchPlugin(d *protocol.DispatchCommand) (guest.Plugin, error) {
	if !manifest.IsManifest(d.SourceCode) {
		return PythonPlugin(d)
	}
	m, err := manifest.Parse([]byte(d.SourceCode))
	if err != nil {
		return guest.Plugin{}, err
	}
	if !filepath.IsAbs(m.Artifact) {
		return guest.Plugin{}, fmt.Errorf("manifest of %s: artifact path %q must be absolute", d.PluginName, m.Artifact)
	}
	// artifact_hash is, as v4 defines it for a DEPLOY (and casparian
	// enqueue --plugin-file stores it), sha256(source_code): here the
	// manifest, which names the binary's SHA-256 (checked by Verify).
	if d.ArtifactHash != "" {
		sum := sha256.Sum256([]byte(d.SourceCode))
		if !strings.EqualFold(d.ArtifactHash, hex.EncodeToString(sum[:])) {
			return guest.Plugin{}, fmt.Errorf("manifest of %s: its hash %s does not match the DISPATCH's artifact_hash %s",
				d.PluginName, hex.EncodeToString(sum[:]), d.ArtifactHash)
		}
	}
	if err := m.Verify(); err != nil {
		return guest.Plugin{}, fmt.Errorf("plugin %s on this worker: %w", d.PluginName, err)
	}
	p := m.Plugin()
	p.Name = d.PluginName
	return p, nil
}

// PythonPlugin treats the DISPATCH's source code as a Python plugin.
func PythonPlugin(d *protocol.DispatchCommand) (guest.Plugin, error) {
	if d.SourceCode == "" {
		return guest.Plugin{}, errors.New("DISPATCH carries no source_code")
	}
	sum := sha256.Sum256([]byte(d.SourceCode))
	return guest.Plugin{Name: d.PluginName, Kind: guest.KindPython, Source: []byte(d.SourceCode),
		Hash: hex.EncodeToString(sum[:])}, nil
}

// Worker is the worker daemon. Create it with New, then call Run.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics

	done chan jobResult // finished jobs → loop

	// Owned by the loop goroutine.
	jobs    map[int64]*job
	unacked map[int64]protocol.Message // CONCLUDEs not yet ACKed
	// unackedAttempt is the attempt of each unacked CONCLUDE.
	unackedAttempt map[int64]int64
	draining       bool
	sock           zmq4.Socket
	lastRecv       time.Time
	envDone        chan envResult    // finished PREPARE_ENVs → loop
	lockfiles      map[string]string // env_hash → requirements, from PREPARE_ENV
	envList        []string          // envHashes' cache
	envListAt      time.Time         // when envList was read; zero: stale
	sessions       int               // connections established so far
}

type job struct {
	id, attempt int64
	plugin      string
	cancel      context.CancelFunc
	requeue     bool // aborted through no fault of its own (drain)
	aborted     bool
	started     time.Time
}

type jobResult struct {
	j  *job
	rc host.Receipt
}

// New validates cfg and returns a Worker. It registers the metrics.
func New(cfg Config) (*Worker, error) {
	if cfg.Host == nil {
		return nil, errors.New("worker: Config.Host is required")
	}
	cfg = cfg.withDefaults()
	w := &Worker{cfg: cfg, log: cfg.Logger.With("worker", cfg.WorkerID), metrics: newMetrics(),
		done: make(chan jobResult, cfg.Slots), envDone: make(chan envResult, 16), jobs: map[int64]*job{}, unacked: map[int64]protocol.Message{},
		unackedAttempt: map[int64]int64{}}
	w.metrics.Slots.Set(float64(cfg.Slots))
	if cfg.Registerer != nil {
		if err := w.metrics.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("worker: register metrics: %w", err)
		}
	}
	return w, nil
}

// ID is the worker id.
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Metrics returns the worker's collectors.
func (w *Worker) Metrics() *Metrics { return w.metrics }

// errDrained ends the connection loop after a drain.
var errDrained = errors.New("drained")

// Run connects to the sentinel and serves until ctx is cancelled, then
// drains: it takes no new job, lets running jobs finish for up to
// DrainTimeout, aborts the rest (the sentinel requeues them), sends every
// CONCLUDE and returns. It reconnects, with backoff, whenever the sentinel
// goes away.
func (w *Worker) Run(ctx context.Context) error {
	if err := transport.Register(transport.DefaultLimits()); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	ep, err := transport.Endpoint(w.cfg.Connect)
	if err != nil {
		return fmt.Errorf("worker: --connect %s: %w", w.cfg.Connect, err)
	}
	if w.cfg.TLS != nil {
		transport.SetClientTLS(w.cfg.TLS)
	}
	var drainDeadline <-chan time.Time
	var drainTimer *time.Timer
	defer func() {
		if drainTimer != nil {
			drainTimer.Stop()
		}
	}()
	startDrain := func() {
		if w.draining {
			return
		}
		w.draining = true
		drainTimer = time.NewTimer(w.cfg.DrainTimeout)
		drainDeadline = drainTimer.C
		w.log.Info("draining: no new jobs; waiting for running ones", "jobs", len(w.jobs), "deadline", w.cfg.DrainTimeout)
	}
	backoff := w.cfg.ReconnectMin
	stop := ctx.Done()
	for {
		if w.draining && len(w.jobs) == 0 && len(w.unacked) == 0 {
			return nil
		}
		connected, err := w.session(ctx, ep, startDrain, &drainDeadline)
		if errors.Is(err, errDrained) {
			return nil
		}
		if connected {
			backoff = w.cfg.ReconnectMin
		}
		if w.draining && len(w.jobs) == 0 {
			// Could not deliver the last CONCLUDEs: the leases expire and
			// the sentinel retries those jobs.
			if len(w.unacked) > 0 {
				w.log.Warn("exiting with unacknowledged CONCLUDEs; the sentinel will retry those jobs when their leases expire",
					"jobs", len(w.unacked))
			}
			return nil
		}
		w.log.Warn("lost the sentinel; reconnecting", "endpoint", w.cfg.Connect, "error", err, "retry_in", backoff)
		// Keep serving job completions while waiting.
		wait := time.NewTimer(jitter(backoff))
	waiting:
		for {
			select {
			case r := <-w.done:
				w.finish(r)
			case <-wait.C:
				break waiting
			case <-stop:
				stop = nil
				startDrain()
				if len(w.jobs) == 0 {
					wait.Stop()
					break waiting
				}
			case <-drainDeadline:
				w.abortAll("drain deadline reached")
			}
		}
		backoff = min(2*backoff, w.cfg.ReconnectMax)
	}
}

// session runs one connection. It reports whether it got connected.
func (w *Worker) session(ctx context.Context, ep string, startDrain func(), drainDeadline *<-chan time.Time) (bool, error) {
	sockCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// One socket per connection, dialled once: a zmq4 DEALER writes to
	// every connected peer, so reconnecting on the same socket could
	// duplicate messages. A fresh random identity avoids colliding with
	// the previous connection's routing entry.
	sock := zmq4.NewDealer(sockCtx, zmq4.WithID(newIdentity()), zmq4.WithDialerMaxRetries(0),
		zmq4.WithDialerTimeout(5*time.Second), zmq4.WithLogger(log.New(io.Discard, "", 0)),
		transport.ClientSecurity(w.cfg.WorkerID, w.cfg.Secret))
	defer sock.Close()
	if err := sock.Dial(ep); err != nil {
		return false, transport.ExplainDialError(err)
	}
	w.sock = sock
	defer func() { w.sock = nil; w.metrics.Connected.Set(0) }()
	w.lastRecv = time.Now()

	inbox := make(chan zmq4.Msg, 64)
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := sock.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case inbox <- m:
			case <-sockCtx.Done():
				return
			}
		}
	}()

	if err := w.identify(); err != nil {
		return false, err
	}
	w.log.Info("connected to the sentinel", "endpoint", w.cfg.Connect, "slots", w.cfg.Slots,
		"capabilities", strings.Join(w.cfg.Capabilities, ","))
	w.metrics.Connected.Set(1)
	// Count connections made, not attempts: a failed dial is no reconnect.
	if w.sessions > 0 {
		w.metrics.Reconnects.Inc()
	}
	w.sessions++
	if err := w.resendUnacked(); err != nil {
		return true, err
	}
	hb := time.NewTicker(w.cfg.HeartbeatInterval)
	defer hb.Stop()
	if w.draining {
		_ = w.sendHeartbeat()
	}
	var ackGrace <-chan time.Time
	for {
		if w.draining && len(w.jobs) == 0 {
			if len(w.unacked) == 0 {
				return true, errDrained
			}
			if ackGrace == nil {
				ackGrace = time.After(5 * time.Second)
			}
		}
		select {
		case <-ctx.Done():
			if !w.draining {
				startDrain()
				if err := w.sendHeartbeat(); err != nil {
					return true, err
				}
			}
			ctx = context.WithoutCancel(ctx) // the drain is now driven by its deadline
		case <-*drainDeadline:
			w.abortAll("drain deadline reached")
		case <-ackGrace:
			w.log.Warn("no ACK for the last CONCLUDEs; exiting anyway", "jobs", len(w.unacked))
			return true, errDrained
		case err := <-recvErr:
			return true, err
		case m := <-inbox:
			w.lastRecv = time.Now()
			w.metrics.MessagesReceived.Inc()
			if err := w.handle(ctx, m); err != nil {
				return true, err
			}
		case r := <-w.done:
			if err := w.finish(r); err != nil {
				return true, err
			}
		case r := <-w.envDone:
			if err := w.envReady(r); err != nil {
				return true, err
			}
		case <-hb.C:
			if since := time.Since(w.lastRecv); since > w.cfg.SentinelTimeout {
				return true, fmt.Errorf("no message from the sentinel for %s", since.Round(time.Second))
			}
			if err := w.sendHeartbeat(); err != nil {
				return true, err
			}
		}
	}
}

func (w *Worker) identify() error {
	h, _ := os.Hostname()
	p := protocol.IdentifyPayload{
		Capabilities: w.cfg.Capabilities, WorkerID: w.cfg.WorkerID, Slots: w.cfg.Slots,
		ProtocolExtensions: []string{protocol.ExtAttempt, protocol.ExtSlots, protocol.ExtConcludeAck, protocol.ExtReidentify},
		Hostname:           h, PID: os.Getpid(),
	}
	if w.cfg.Envs != nil {
		p.ProtocolExtensions = append(p.ProtocolExtensions, protocol.ExtPrepareEnv)
		p.Envs = w.envHashes()
	}
	m, err := protocol.NewMessage(protocol.OpIdentify, 0, p)
	if err != nil {
		return err
	}
	if err := w.sendMsg(m); err != nil {
		return err
	}
	return w.sendHeartbeat()
}

// resendUnacked sends again every CONCLUDE the sentinel has not ACKed.
func (w *Worker) resendUnacked() error {
	for _, id := range sortedIDs(w.unacked) {
		if err := w.sendMsg(w.unacked[id]); err != nil {
			return err
		}
	}
	return nil
}

func (w *Worker) sendMsg(m protocol.Message) error {
	if w.sock == nil {
		return errors.New("not connected")
	}
	frames, err := protocol.Encode(m)
	if err != nil {
		return err
	}
	if err := w.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		return fmt.Errorf("send %s: %w", m.OpCode, err)
	}
	w.metrics.MessagesSent.Inc()
	return nil
}

func (w *Worker) status() protocol.HeartbeatPayload {
	p := protocol.HeartbeatPayload{Slots: w.cfg.Slots, ActiveJobCount: len(w.jobs), Envs: w.envHashes()}
	p.ActiveJobIDs = sortedIDs(w.jobs)
	if len(p.ActiveJobIDs) > 0 {
		p.CurrentJobID = &p.ActiveJobIDs[0]
	} else {
		p.ActiveJobIDs = nil
	}
	p.FreeSlots = max(0, w.cfg.Slots-len(w.jobs))
	switch {
	case w.draining:
		p.Status, p.FreeSlots = protocol.WorkerDraining, 0
	case len(w.jobs) == 0:
		p.Status = protocol.WorkerIdle
	case len(w.jobs) >= w.cfg.Slots:
		p.Status = protocol.WorkerBusy
	default:
		p.Status = protocol.WorkerAlive
	}
	return p
}

func (w *Worker) sendHeartbeat() error {
	m, err := protocol.NewMessage(protocol.OpHeartbeat, 0, w.status())
	if err != nil {
		return err
	}
	return w.sendMsg(m)
}

func (w *Worker) handle(ctx context.Context, raw zmq4.Msg) error {
	m, err := protocol.Decode(raw.Frames)
	if err != nil {
		w.log.Warn("dropped a malformed message from the sentinel", "error", err)
		return nil
	}
	switch m.OpCode {
	case protocol.OpDispatch:
		var d protocol.DispatchCommand
		if err := m.Unmarshal(&d); err != nil {
			w.log.Warn(fmt.Sprintf("[Job %d] dropped a DISPATCH with a bad payload", m.JobID), "error", err)
			return w.sendMsgErr(m.JobID, "bad DISPATCH payload: "+err.Error())
		}
		return w.dispatch(ctx, int64(m.JobID), &d)
	case protocol.OpAbort:
		j := w.jobs[int64(m.JobID)]
		if j == nil {
			w.log.Debug("ABORT for a job not running here", "job_id", m.JobID)
			return nil
		}
		if !j.aborted {
			j.aborted = true
			w.log.Warn(fmt.Sprintf("[Job %d] ABORT received: stopping the plugin", j.id))
			j.cancel()
		}
	case protocol.OpHeartbeat:
		if len(m.Payload) == 0 { // a probe: answer with our status
			return w.sendHeartbeat()
		}
	case protocol.OpAck:
		if m.JobID != 0 {
			// An ACK naming another attempt is about an earlier CONCLUDE of
			// the same job: keep the one still pending.
			var ack protocol.DeployResponse
			_ = m.Unmarshal(&ack)
			id := int64(m.JobID)
			if ack.Attempt != 0 && ack.Attempt != w.unackedAttempt[id] {
				return nil
			}
			delete(w.unacked, id)
			delete(w.unackedAttempt, id)
			w.metrics.PendingConclusions.Set(float64(len(w.unacked)))
		}
	case protocol.OpErr:
		var p protocol.ErrorPayload
		_ = m.Unmarshal(&p)
		if m.JobID == 0 && strings.HasPrefix(p.Message, protocol.ReidentifyPrefix) {
			w.log.Info("the sentinel does not know this worker; identifying again")
			if err := w.identify(); err != nil {
				return err
			}
			// A sentinel that did not know us did not ACK our CONCLUDEs
			// (it cannot tell that we speak conclude-ack): send them again.
			return w.resendUnacked()
		}
		w.log.Warn("the sentinel reported an error", "job_id", m.JobID, "message", p.Message)
	case protocol.OpReload:
		w.log.Info("RELOAD received: plugins and sinks arrive with each DISPATCH, nothing is cached")
	case protocol.OpPrepareEnv:
		var p protocol.PrepareEnvCommand
		_ = m.Unmarshal(&p)
		if w.cfg.Envs == nil {
			return w.sendMsgErr(0, fmt.Sprintf("PREPARE_ENV %s: this worker does not provision plugin environments; it runs plugins with its configured Python", p.EnvHash))
		}
		w.prepareEnv(ctx, p)
	default:
		w.log.Warn("unexpected message from the sentinel", "opcode", m.OpCode.String(), "job_id", m.JobID)
	}
	return nil
}

func (w *Worker) sendMsgErr(jobID uint64, msg string) error {
	m, err := protocol.NewMessage(protocol.OpErr, jobID, protocol.ErrorPayload{Message: msg})
	if err != nil {
		return err
	}
	return w.sendMsg(m)
}

// dispatch starts a job, or answers REJECTED when no slot is free.
func (w *Worker) dispatch(ctx context.Context, id int64, d *protocol.DispatchCommand) error {
	w.metrics.JobsReceived.Inc()
	if old := w.jobs[id]; old != nil {
		if old.attempt == d.Attempt {
			w.log.Warn(fmt.Sprintf("[Job %d] duplicate DISPATCH ignored", id))
			return nil
		}
		// The sentinel gave the job a new attempt: the old one is stale.
		old.aborted = true
		old.cancel()
	}
	if w.draining || len(w.jobs) >= w.cfg.Slots {
		w.metrics.JobsRejected.Inc()
		why := "no free slot"
		if w.draining {
			why = "worker is shutting down"
		}
		w.log.Info(fmt.Sprintf("[Job %d] rejected: %s", id, why))
		return w.conclude(id, protocol.JobReceipt{Status: protocol.StatusRejected, Attempt: d.Attempt,
			ErrorMessage: fmt.Sprintf("[Job %d] rejected by worker %s: %s", id, w.cfg.WorkerID, why)})
	}
	plugin, err := w.cfg.Plugin(d)
	if err != nil {
		w.metrics.JobsFailed.Inc()
		return w.conclude(id, protocol.JobReceipt{Status: protocol.StatusFailed, Attempt: d.Attempt,
			ErrorMessage: guest.JobError(id, fmt.Errorf("load plugin %s: %w", d.PluginName, err))})
	}
	release := func() {}
	if d.EnvHash != "" && d.EnvHash != "system" {
		if w.cfg.Envs == nil {
			w.log.Warn(fmt.Sprintf("[Job %d] plugin %s asks for environment %s; this worker runs it with its configured interpreter",
				id, d.PluginName, shortHash(d.EnvHash)))
		} else {
			python, rel, err := w.envPython(ctx, d.EnvHash)
			if err != nil {
				// The sentinel learns from the next heartbeat that this worker
				// lacks it, and asks for it again.
				w.metrics.JobsRejected.Inc()
				return w.conclude(id, protocol.JobReceipt{Status: protocol.StatusRejected, Attempt: d.Attempt,
					ErrorMessage: fmt.Sprintf("[Job %d] worker %s: %v", id, w.cfg.WorkerID, err)})
			}
			plugin.Interpreter, release = python, rel
		}
	}
	hj := host.Job{ID: id, FileVersionID: d.FileVersionID, InputPath: d.FilePath, Plugin: plugin,
		FileStem: fmt.Sprintf("%s_%d", strings.TrimSuffix(filepath.Base(d.FilePath), filepath.Ext(d.FilePath)), id)}
	for _, k := range d.Sinks {
		hj.Sinks = append(hj.Sinks, host.SinkConfig{Topic: k.Topic, URI: k.URI})
	}
	jctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	j := &job{id: id, attempt: d.Attempt, plugin: d.PluginName, cancel: cancel, started: time.Now()}
	w.jobs[id] = j
	w.metrics.BusySlots.Set(float64(len(w.jobs)))
	w.metrics.BridgeExecutions.Inc()
	w.log.Debug("job started", "job_id", id, "plugin", d.PluginName, "attempt", d.Attempt, "input", d.FilePath)
	go func() {
		defer cancel()
		defer release()
		w.done <- jobResult{j: j, rc: w.cfg.Host.Run(jctx, hj)}
	}()
	return nil
}

// finish turns a finished job into a CONCLUDE.
func (w *Worker) finish(r jobResult) error {
	j, rc := r.j, r.rc
	if w.jobs[j.id] == j {
		delete(w.jobs, j.id)
	}
	w.metrics.BusySlots.Set(float64(len(w.jobs)))
	w.metrics.JobTimeMicros.Add(float64(rc.Duration.Microseconds()))
	w.metrics.BridgeTimeMicros.Add(float64(rc.GuestTime.Microseconds()))
	w.metrics.ParquetTimeMicros.Add(float64(rc.CommitTime.Microseconds()))
	w.metrics.JobDuration.Observe(rc.Duration.Seconds())
	receipt := protocol.JobReceipt{Status: protocol.ReceiptStatus(rc.Status), Attempt: j.attempt,
		Metrics: map[string]int64{"rows": rc.TotalRows(), "duration_ms": rc.Duration.Milliseconds()}}
	for topic, n := range rc.Rows {
		receipt.Metrics["rows."+topic] = n
	}
	for _, a := range rc.Artifacts {
		receipt.Artifacts = append(receipt.Artifacts, map[string]string{"topic": a.Topic, "uri": a.URI,
			"rows": strconv.FormatInt(a.Rows, 10)})
		if strings.HasPrefix(a.URI, "parquet://") {
			w.metrics.ParquetFiles.Inc()
			w.metrics.ParquetRows.Add(float64(a.Rows))
		}
	}
	switch {
	case rc.Status == host.StatusSuccess:
		w.metrics.JobsCompleted.Inc()
	case rc.Status == host.StatusAborted || j.aborted:
		receipt.Status = protocol.StatusAborted
		receipt.Requeue = j.requeue
		w.metrics.JobsAborted.Inc()
	default:
		w.metrics.JobsFailed.Inc()
		receipt.Retriable = errors.Is(rc.Err, guest.ErrCrashed) || errors.Is(rc.Err, guest.ErrTimeout) ||
			errors.Is(rc.Err, guest.ErrSink)
		var ge *guest.Error
		if errors.As(rc.Err, &ge) {
			receipt.ErrorKind = ge.Code()
		}
		if errors.Is(rc.Err, guest.ErrTimeout) {
			w.metrics.BridgeTimeouts.Inc()
		} else if !errors.Is(rc.Err, guest.ErrInput) && !errors.Is(rc.Err, guest.ErrSink) {
			w.metrics.BridgeErrors.Inc()
		}
	}
	if rc.Err != nil {
		receipt.ErrorMessage = rc.Err.Error()
		if receipt.Status == protocol.StatusAborted {
			w.log.Info(fmt.Sprintf("[Job %d] aborted", j.id), "requeue", j.requeue)
		} else {
			w.log.Warn(rc.Err.Error(), "job_id", j.id, "plugin", j.plugin)
		}
	}
	return w.conclude(j.id, receipt)
}

// conclude sends a CONCLUDE and keeps it until the sentinel ACKs it.
func (w *Worker) conclude(id int64, rc protocol.JobReceipt) error {
	m, err := protocol.NewMessage(protocol.OpConclude, uint64(id), rc)
	if err != nil {
		return err
	}
	if len(w.unacked) < 4096 {
		w.unacked[id] = m
		w.unackedAttempt[id] = rc.Attempt
		w.metrics.PendingConclusions.Set(float64(len(w.unacked)))
	}
	if w.sock == nil {
		return nil // sent after reconnecting
	}
	return w.sendMsg(m)
}

// abortAll stops every running job; the sentinel requeues them.
func (w *Worker) abortAll(why string) {
	for _, j := range w.jobs {
		if !j.aborted {
			j.aborted, j.requeue = true, true
			w.log.Warn(fmt.Sprintf("[Job %d] aborting: %s; the sentinel will requeue it", j.id, why))
			j.cancel()
		}
	}
}

func sortedIDs[V any](m map[int64]V) []int64 {
	ids := make([]int64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	for i := 1; i < len(ids); i++ {
		for k := i; k > 0 && ids[k] < ids[k-1]; k-- {
			ids[k], ids[k-1] = ids[k-1], ids[k]
		}
	}
	return ids
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func newIdentity() zmq4.SocketIdentity {
	b := make([]byte, 8)
	_, _ = cryptoRead(b)
	return zmq4.SocketIdentity("w-" + hex.EncodeToString(b))
}

var cryptoRead = rand.Read

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}
