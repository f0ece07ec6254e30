package sentinel

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

func header(version byte, op protocol.OpCode, jobID uint64, payloadLen uint32) []byte {
	h := make([]byte, protocol.HeaderSize)
	h[0], h[1] = version, byte(op)
	binary.BigEndian.PutUint64(h[4:12], jobID)
	binary.BigEndian.PutUint32(h[12:16], payloadLen)
	return h
}

// rawMsg is a well-framed message with the given payload text.
func rawMsg(op protocol.OpCode, jobID uint64, payload string) [][]byte {
	return [][]byte{header(protocol.Version, op, jobID, uint32(len(payload))), []byte(payload)}
}

func TestMalformedMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	m := e.s.Metrics()
	bad := e.dial("", false)
	// A registered worker sends garbage too.
	reg := e.worker(workerOpts{ID: "sloppy", Caps: []string{"q"}})
	e.waitRegistered("sloppy")

	idJSON := []byte(`{"capabilities":["p"],"worker_id":"x"}`)
	cases := []struct {
		name   string
		peer   *fakeWorker
		frames [][]byte
		errRep bool // the sentinel answers with ERR
	}{
		{"one frame", bad, [][]byte{header(protocol.Version, protocol.OpHeartbeat, 0, 0)}, false},
		{"three frames", bad, [][]byte{header(protocol.Version, protocol.OpHeartbeat, 0, 0), {}, {}}, false},
		{"short header", bad, [][]byte{{4, 4, 0}, {}}, false},
		{"bad version", bad, [][]byte{header(0x03, protocol.OpIdentify, 0, uint32(len(idJSON))), idJSON}, false},
		{"bad opcode", bad, [][]byte{header(protocol.Version, 42, 0, 0), {}}, false},
		{"length mismatch", bad, [][]byte{header(protocol.Version, protocol.OpIdentify, 0, 10), idJSON}, false},
		{"invalid JSON", bad, rawMsg(protocol.OpIdentify, 0, "{nope"), true},
		{"JSON array", reg, rawMsg(protocol.OpHeartbeat, 0, "[]"), true},
		{"bad receipt status", reg, rawMsg(protocol.OpConclude, 7, `{"status":"MEH"}`), true},
		{"unexpected opcode", reg, rawMsg(protocol.OpDispatch, 0, "{}"), true},
		{"ABORT from a worker", reg, [][]byte{header(protocol.Version, protocol.OpAbort, 3, 0), {}}, false},
	}
	for _, c := range cases {
		before := val(t, m.ProtocolErrors)
		c.peer.sendRaw(c.frames...)
		e.waitMetric("protocol_errors_total after "+c.name, m.ProtocolErrors, before+1)
		if c.errRep {
			if _, ok := c.peer.tryExpect(protocol.OpErr, -1, waitFor); !ok {
				t.Fatalf("%s: no ERR reply", c.name)
			}
		}
	}
	// Nothing was registered, no ERR for the undecodable ones.
	bad.expectNone(protocol.OpErr, quiet)
	if got := e.registered(); len(got) != 1 {
		t.Errorf("registered %v", got)
	}
	if got := val(t, m.MessagesReceived); got < float64(len(cases)+1) {
		t.Errorf("messages_received_total = %v", got)
	}
	// The sentinel keeps serving a good worker.
	id := e.job("p")
	good := e.worker(workerOpts{ID: "good", Caps: []string{"p"}, Exts: ackExts})
	if got, _ := good.dispatch(); got != id {
		t.Fatalf("got job %d, want %d", got, id)
	}
	good.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
	good.expect(protocol.OpAck, id)
	e.waitStatus(id, store.StatusCompleted)
	// The sloppy worker is still registered.
	if _, ok := e.info("sloppy"); !ok {
		t.Error("the sloppy worker lost its registration")
	}
}

// A lone RELOAD header (as the Python sentinel sent it) is valid.
func TestLoneReloadHeaderAccepted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	op := e.dial("", false)
	op.sendRaw(header(protocol.Version, protocol.OpReload, 0, 0))
	ack := ackOf(t, op.expect(protocol.OpAck, 0))
	if !ack.Success {
		t.Errorf("ACK %+v", ack)
	}
	if got := val(t, e.s.Metrics().ProtocolErrors); got != 0 {
		t.Errorf("protocol_errors_total = %v", got)
	}
}

func deployCmd(name, version, src, lock string) protocol.DeployCommand {
	art := sha256.Sum256([]byte(src + lock))
	d := protocol.DeployCommand{PluginName: name, Version: version, SourceCode: src, LockfileContent: lock,
		ArtifactHash: hex.EncodeToString(art[:]), Signature: "00", PublisherName: "tester"}
	if lock != "" {
		env := sha256.Sum256([]byte(lock))
		d.EnvHash = hex.EncodeToString(env[:])
	}
	return d
}

func manifestStatuses(t *testing.T, e *env, plugin string) map[int64]string {
	t.Helper()
	rows, err := e.db().Query(`SELECT id, status FROM cf_plugin_manifest WHERE plugin_name = ?`, plugin)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var id int64
		var st string
		if err := rows.Scan(&id, &st); err != nil {
			t.Fatal(err)
		}
		out[id] = st
	}
	return out
}

func TestDeploy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	pub := e.dial("", false)
	m := e.s.Metrics()

	d1 := deployCmd("deployed", "1.0", "def parse(p): return []\n", "")
	pub.send(protocol.OpDeploy, 0, d1)
	ack := ackOf(t, pub.expect(protocol.OpAck, 0))
	if !ack.Success || ack.PluginID == nil {
		t.Fatalf("ACK %+v, want success with a plugin id", ack)
	}
	v1 := *ack.PluginID
	if id, version, err := e.st.ActiveManifest(e.ctx, "deployed"); err != nil || id != v1 || version != "1.0" {
		t.Fatalf("active manifest %d %q %v, want %d 1.0", id, version, err, v1)
	}

	lock := "version = 1\n[[package]]\nname = \"pyarrow\"\n"
	d2 := deployCmd("deployed", "2.0", "def parse(p): return [1]\n", lock)
	pub.send(protocol.OpDeploy, 0, d2)
	ack = ackOf(t, pub.expect(protocol.OpAck, 0))
	if !ack.Success || ack.PluginID == nil || *ack.PluginID == v1 {
		t.Fatalf("second ACK %+v", ack)
	}
	v2 := *ack.PluginID
	st := manifestStatuses(t, e, "deployed")
	if st[v1] != store.ManifestSuperseded || st[v2] != store.ManifestActive || len(st) != 2 {
		t.Fatalf("manifest statuses %v, want %d SUPERSEDED and %d ACTIVE", st, v1, v2)
	}
	if got := val(t, m.Deploys.WithLabelValues("ok")); got != 2 {
		t.Errorf("deploys ok = %v", got)
	}

	// The DISPATCH carries the deployed manifest.
	id := e.job("deployed")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"deployed"}})
	got, dc := w.dispatch()
	if got != id || dc.SourceCode != d2.SourceCode || dc.EnvHash != d2.EnvHash || dc.ArtifactHash != d2.ArtifactHash {
		t.Errorf("DISPATCH %d: source %q env %q artifact %q; want the v2 manifest", got, dc.SourceCode, dc.EnvHash, dc.ArtifactHash)
	}

	// Refused deploys store nothing.
	for _, c := range []struct {
		name string
		cmd  protocol.DeployCommand
		want string
	}{
		{"wrong artifact hash", func() protocol.DeployCommand {
			d := deployCmd("refused", "1", "src", "")
			d.ArtifactHash = strings.Repeat("0", 64)
			return d
		}(), "artifact_hash"},
		{"hash of source only", func() protocol.DeployCommand {
			d := deployCmd("refused", "1", "src", "lock")
			h := sha256.Sum256([]byte("src"))
			d.ArtifactHash = hex.EncodeToString(h[:])
			return d
		}(), "artifact_hash"},
		{"wrong env hash", func() protocol.DeployCommand {
			d := deployCmd("refused", "1", "src", "lock")
			d.EnvHash = "system"
			return d
		}(), "env_hash"},
		{"bad name", deployCmd("no/slashes", "1", "src", ""), "plugin_name"},
		{"empty source", deployCmd("refused", "1", "", ""), "source_code is empty"},
	} {
		pub.send(protocol.OpDeploy, 0, c.cmd)
		errm := pub.expect(protocol.OpErr, 0)
		var p protocol.ErrorPayload
		if err := errm.Unmarshal(&p); err != nil || !strings.Contains(p.Message, c.want) {
			t.Errorf("%s: ERR %q (%v), want it to mention %q", c.name, p.Message, err, c.want)
		}
	}
	pub.expectNone(protocol.OpAck, quiet)
	if st := manifestStatuses(t, e, "refused"); len(st) != 0 {
		t.Errorf("refused deploys stored manifests %v", st)
	}
	if _, _, err := e.st.ActiveManifest(e.ctx, "refused"); err == nil {
		t.Error("refused plugin has an active manifest")
	}
	if got := val(t, m.Deploys.WithLabelValues("error")); got != 5 {
		t.Errorf("deploys error = %v, want 5", got)
	}
}

// A job waiting for its plugin is dispatched once the plugin is deployed.
func TestDeployUnblocksWaitingJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	w := e.worker(workerOpts{ID: "w", Caps: []string{"later"}})
	e.waitRegistered("w")
	pub := e.dial("", false)
	pub.send(protocol.OpDeploy, 0, deployCmd("later", "1", "def parse(p): pass\n", ""))
	pub.expect(protocol.OpAck, 0)
	id := e.job("later")
	if got, _ := w.dispatch(); got != id {
		t.Fatalf("got %d, want %d", got, id)
	}
}

func TestReloadBroadcast(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	w1 := e.worker(workerOpts{ID: "w1", Caps: []string{"p"}})
	w2 := e.worker(workerOpts{ID: "w2", Caps: []string{"p"}})
	e.waitRegistered("w1", "w2")
	op := e.dial("", false)
	op.send(protocol.OpReload, 0, nil)
	ack := ackOf(t, op.expect(protocol.OpAck, 0))
	if !ack.Success || !strings.Contains(ack.Message, "2 workers") {
		t.Errorf("ACK %+v", ack)
	}
	for _, w := range []*fakeWorker{w1, w2} {
		r := w.expect(protocol.OpReload, 0)
		if len(r.Payload) != 0 {
			t.Errorf("RELOAD to %s has payload %q", w.id, r.Payload)
		}
	}
	op.expectNone(protocol.OpReload, 0)
	// A RELOAD from a worker is ignored: no broadcast, no ACK.
	w1.send(protocol.OpReload, 0, nil)
	w1.expectNone(protocol.OpAck, quiet)
	w2.expectNone(protocol.OpReload, 0)
}

func TestAbortRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	running, queued := e.job("p"), int64(0)
	w := e.worker(workerOpts{ID: "holder", Caps: []string{"p"}})
	w.dispatch()
	queued = e.jobWith(e.defaultFile(), "nobody-runs-this", 0, "")

	op := e.dial("", false)
	op.send(protocol.OpAbort, uint64(running), nil)
	ack := ackOf(t, op.expect(protocol.OpAck, running))
	if !ack.Success || !strings.Contains(ack.Message, "holder") {
		t.Errorf("ACK %+v", ack)
	}
	w.expect(protocol.OpAbort, running)
	// The job stays RUNNING until the worker concludes it.
	if j := e.get(running); j.Status != store.StatusRunning {
		t.Errorf("job %s after the ABORT request", j.Status)
	}
	w.conclude(running, protocol.JobReceipt{Status: protocol.StatusAborted, ErrorMessage: "aborted on request"})
	e.waitStatus(running, store.StatusFailed)

	for _, id := range []int64{queued, running, 777777} {
		op.send(protocol.OpAbort, uint64(id), nil)
		errm := op.expect(protocol.OpErr, id)
		var p protocol.ErrorPayload
		if err := errm.Unmarshal(&p); err != nil || !strings.Contains(p.Message, fmt.Sprint(id)) {
			t.Errorf("ERR for job %d: %q (%v)", id, p.Message, err)
		}
	}
	w.expectNone(protocol.OpAbort, quiet)
	if j := e.get(queued); j.Status != store.StatusQueued {
		t.Errorf("queued job is %s after a refused ABORT", j.Status)
	}
}

func TestEnvReadyAndUnknownErrAreHarmless(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	w.send(protocol.OpEnvReady, 0, protocol.EnvReadyPayload{EnvHash: "abc", InterpreterPath: "/usr/bin/python3", Cached: true})
	w.send(protocol.OpErr, 0, protocol.ErrorPayload{Message: "cannot provision"})
	id := e.job("p")
	if got, _ := w.dispatch(); got != id {
		t.Fatalf("got %d want %d", got, id)
	}
	if got := val(t, e.s.Metrics().ProtocolErrors); got != 0 {
		t.Errorf("protocol_errors_total = %v", got)
	}
}

func TestReidentifyUnderNewName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	e.plugin("p")
	id := e.job("p")
	w := e.worker(workerOpts{ID: "first-name", Caps: []string{"p"}})
	w.dispatch()
	// Same connection, new worker_id: the old registration is released.
	w.identify(workerOpts{ID: "second-name", Caps: []string{"p"}})
	eventually(t, waitFor, func() (bool, string) {
		got := e.registered()
		return len(got) == 1 && got[0] == "second-name", fmt.Sprintf("registered %v", got)
	})
	// The job of the old name was requeued, and goes to the new one.
	got, d := w.dispatch()
	if got != id || d.Attempt != 2 {
		t.Fatalf("got job %d attempt %d, want %d attempt 2", got, d.Attempt, id)
	}
	if j := e.get(id); j.LeaseOwner != "second-name" {
		t.Errorf("lease owner %q", j.LeaseOwner)
	}
}

func TestDefaultWorkerID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	w := e.dial("", false)
	w.identify(workerOpts{Caps: []string{"p"}}) // no worker_id
	eventually(t, waitFor, func() (bool, string) {
		got := e.registered()
		return len(got) == 1 && strings.HasPrefix(got[0], "worker-") && len(got[0]) == len("worker-")+8,
			fmt.Sprintf("registered %v", got)
	})
}

func TestMaxPayload(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.MaxPayload = 256 }})
	p := e.dial("", false)
	big := protocol.IdentifyPayload{WorkerID: "big", Capabilities: []string{strings.Repeat("c", 300)}}
	p.send(protocol.OpIdentify, 0, big)
	e.waitMetric("protocol_errors_total", e.s.Metrics().ProtocolErrors, 1)
	if got := e.registered(); len(got) != 0 {
		t.Fatalf("an oversized IDENTIFY registered %v", got)
	}
	p.identify(workerOpts{ID: "small", Caps: []string{"p"}})
	e.waitRegistered("small")
}

func TestMetricsRegistry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.ProbeInterval = 20 * time.Millisecond }})
	e.plugin("p")
	e.job("p")
	e.job("p")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"p"}})
	w.dispatch()
	// Probes reach the worker.
	eventually(t, waitFor, func() (bool, string) {
		return w.probes.Load() >= 2, fmt.Sprintf("%d probes", w.probes.Load())
	})
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	queue := map[string]float64{}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetName() != "casparian_queue_jobs" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" {
					queue[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	if queue[store.StatusRunning] != 1 || queue[store.StatusQueued] != 1 || len(queue) != len(store.Statuses) {
		t.Errorf("casparian_queue_jobs = %v, want 1 RUNNING and 1 QUEUED, every status present", queue)
	}
	for _, n := range []string{"casparian_jobs_dispatched_total", "casparian_workers_registered_total",
		"casparian_messages_sent_total", "casparian_sentinel_workers", "casparian_transport_dropped_connections_total"} {
		if !names[n] {
			t.Errorf("metric %s not exported", n)
		}
	}
	if got := val(t, e.s.Metrics().WorkersRegistered); got != 1 {
		t.Errorf("workers_registered_total = %v", got)
	}
	if got := val(t, e.s.Metrics().MessagesSent); got < 3 {
		t.Errorf("messages_sent_total = %v, want the DISPATCH and the probes", got)
	}
	// The same registry cannot take a second sentinel's metrics.
	if _, err := New(Config{Store: e.st, Registerer: e.reg}); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}
