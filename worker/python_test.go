package worker_test

// The behaviours that matter, with the real Python guest: a successful job
// with Parquet output and its receipt, ABORT and the drain deadline killing
// the plugin's process, and a plugin that raises.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/worker"
)

const pyLines = `
import pyarrow as pa

class Handler:
    def execute(self, path):
        lines = open(path).read().splitlines()
        yield pa.RecordBatch.from_pydict({"line": lines, "len": [len(l) for l in lines]})
`

// pySleeper writes its PID to pidFile, then sleeps until killed.
func pySleeper(pidFile string) string {
	return fmt.Sprintf(`
import os, time

class Handler:
    def execute(self, path):
        open(%q + ".tmp", "w").write(str(os.getpid()))
        os.rename(%q + ".tmp", %q)
        time.sleep(300)
`, pidFile, pidFile, pidFile)
}

// waitPid waits for the plugin to write its PID file and returns the PID.
func waitPid(t *testing.T, pidFile string) int {
	t.Helper()
	var pid int
	eventually(t, "the plugin wrote its PID", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	if testenv.ProcessGone(pid) {
		t.Fatalf("plugin process %d is not running", pid)
	}
	return pid
}

// A real Python plugin from the DISPATCH's inline source (the default
// Config.Plugin): CONCLUDE SUCCESS with attempt, rows and artifacts, and the
// Parquet file exists. Not ACKed, the CONCLUDE is resent after a reconnect;
// once ACKed, it is not.
func TestPythonJobSuccess(t *testing.T) {
	s1 := newSentinel(t)
	s1.autoAck.Store(false)
	h := startWorker(t, s1, options{python: true, cfg: func(c *worker.Config) { c.Plugin = nil }})
	r1, _ := s1.identify()
	s1.dispatch(r1.id, 17, protocol.DispatchCommand{PluginName: "py_lines", FilePath: h.input, FileVersionID: 170,
		EnvHash: "system", SourceCode: pyLines, Attempt: 4,
		Sinks: []protocol.SinkConfig{{Topic: "output", URI: "parquet://lines"}}})
	c1, rc := s1.conclude(17)
	if rc.Status != protocol.StatusSuccess || rc.Attempt != 4 || rc.ErrorMessage != "" {
		t.Fatalf("receipt %+v", rc)
	}
	if rc.Metrics["rows"] != 3 {
		t.Errorf("metrics %v, want rows 3", rc.Metrics)
	}
	want := filepath.Join(h.out, "lines", "input_17.parquet")
	if len(rc.Artifacts) != 1 || rc.Artifacts[0]["topic"] != "output" || rc.Artifacts[0]["uri"] != "parquet://"+want ||
		rc.Artifacts[0]["rows"] != "3" {
		t.Fatalf("artifacts %v, want [{topic output, uri parquet://%s, rows 3}]", rc.Artifacts, want)
	}
	if n := parquetRows(t, want); n != 3 {
		t.Errorf("%s holds %d rows, want 3", want, n)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_completed_total", m.JobsCompleted, 1)
	wantMetric(t, "parquet_files_written_total", m.ParquetFiles, 1)
	wantMetric(t, "parquet_rows_written_total", m.ParquetRows, 3)
	wantMetric(t, "pending_conclusions", m.PendingConclusions, 1)
	if value(m.BridgeTimeMicros) <= 0 || value(m.JobTimeMicros) < value(m.BridgeTimeMicros) {
		t.Errorf("bridge time %v µs, job time %v µs", value(m.BridgeTimeMicros), value(m.JobTimeMicros))
	}

	// Not ACKed: resent, byte for byte, to the sentinel that comes back.
	s1.close()
	s2 := newSentinelAt(t, s1.ep)
	s2.autoAck.Store(false)
	h.s = s2
	s2.identify()
	c2, _ := s2.conclude(17)
	if string(c2.m.Payload) != string(c1.m.Payload) {
		t.Errorf("resent CONCLUDE %s, first %s", c2.m.Payload, c1.m.Payload)
	}
	s2.send(c2.id, protocol.OpAck, 17, protocol.DeployResponse{Success: true})
	eventually(t, "pending_conclusions = 0 after the ACK", func() bool { return value(m.PendingConclusions) == 0 })

	// ACKed: not resent.
	s2.close()
	s3 := newSentinelAt(t, s1.ep)
	h.s = s3
	s3.identify()
	s3.heartbeat("first", nil)
	s3.heartbeat("second", nil)
	if n := s3.countOp(protocol.OpConclude, -1); n != 0 {
		t.Errorf("an ACKed CONCLUDE was resent")
	}
	wantMetric(t, "jobs_completed_total (no rerun)", m.JobsCompleted, 1)
}

// ABORT of a running Python job kills its process and concludes ABORTED
// (not for requeue); an ABORT for an unknown job is ignored.
func TestPythonAbortKillsProcess(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{python: true})
	r, _ := s.identify()
	pidFile := filepath.Join(h.pyDir, "pid")
	h.dispatch(r.id, 23, 2, "py_sleeper", pySleeper(pidFile))
	pid := waitPid(t, pidFile)
	s.heartbeat("listing job 23", func(p protocol.HeartbeatPayload) bool { return slices.Equal(p.ActiveJobIDs, []int64{23}) })

	s.send(r.id, protocol.OpAbort, 24, nil) // unknown: ignored
	s.send(r.id, protocol.OpAbort, 23, nil)
	_, rc := s.conclude(23)
	if rc.Status != protocol.StatusAborted || rc.Requeue || rc.Attempt != 2 || !strings.HasPrefix(rc.ErrorMessage, "[Job 23] CANCELLED") {
		t.Errorf("receipt %+v", rc)
	}
	// The guest reaps its process before the job ends.
	if !testenv.ProcessGone(pid) {
		t.Errorf("plugin process %d still runs after CONCLUDE ABORTED", pid)
	}
	if n := s.count(func(r *rmsg) bool { return r.m.JobID == 24 }); n != 0 {
		t.Errorf("%d answers to the ABORT of an unknown job", n)
	}
	s.heartbeat("IDLE", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerIdle })
	m := h.w.Metrics()
	wantMetric(t, "jobs_aborted_total", m.JobsAborted, 1)
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 0)
	entries, _ := os.ReadDir(h.out)
	if len(entries) != 0 {
		t.Errorf("aborted job left output: %v", entries)
	}
}

// A Python job running past DrainTimeout is killed and handed back with
// requeue:true before Run returns.
func TestPythonDrainTimeoutKillsProcess(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{python: true, cfg: func(c *worker.Config) { c.DrainTimeout = 500 * time.Millisecond }})
	r, _ := s.identify()
	pidFile := filepath.Join(h.pyDir, "pid")
	h.dispatch(r.id, 25, 1, "py_sleeper", pySleeper(pidFile))
	pid := waitPid(t, pidFile)
	h.cancel()
	s.heartbeat("DRAINING", func(p protocol.HeartbeatPayload) bool { return p.Status == protocol.WorkerDraining })
	_, rc := s.conclude(25)
	if rc.Status != protocol.StatusAborted || !rc.Requeue || rc.Attempt != 1 {
		t.Errorf("receipt %+v", rc)
	}
	if !testenv.ProcessGone(pid) {
		t.Errorf("plugin process %d still runs after the drain aborted it", pid)
	}
	if err := h.waitRun(waitTimeout); err != nil {
		t.Errorf("Run: %v", err)
	}
}

// A Python plugin that raises: CONCLUDE FAILED with the job prefix, the
// exception and its traceback.
func TestPythonPluginRaises(t *testing.T) {
	s := newSentinel(t)
	h := startWorker(t, s, options{python: true, cfg: func(c *worker.Config) { c.Plugin = nil }})
	r, _ := s.identify()
	h.dispatch(r.id, 27, 3, "py_raiser", `
class Handler:
    def execute(self, path):
        raise ValueError("bad row 17 in " + path)
`)
	_, rc := s.conclude(27)
	if rc.Status != protocol.StatusFailed || rc.Attempt != 3 {
		t.Fatalf("receipt %+v", rc)
	}
	msg := rc.ErrorMessage
	if !strings.HasPrefix(msg, "[Job 27] PLUGIN_ERROR: ValueError: bad row 17 in "+h.input) {
		t.Errorf("error_message does not start with the job and the exception:\n%s", msg)
	}
	if !strings.Contains(msg, "line 4") || !strings.Contains(msg, "execute") {
		t.Errorf("error_message lacks the traceback:\n%s", msg)
	}
	m := h.w.Metrics()
	wantMetric(t, "jobs_failed_total", m.JobsFailed, 1)
	wantMetric(t, "bridge_errors_total", m.BridgeErrors, 1)
}
