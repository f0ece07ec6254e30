package sentinel

import (
	"strings"
	"testing"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// A job whose plugin needs an environment goes to a provisioning worker
// only once it has the environment: PREPARE_ENV first, DISPATCH after
// ENV_READY, and no second PREPARE_ENV.
func TestPrepareEnvBeforeDispatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	pub := e.dial("", false)
	lock := "six==1.16.0\n"
	d := deployCmd("withdeps", "1", "def parse(p): return []\n", lock)
	pub.send(protocol.OpDeploy, 0, d)
	pub.expect(protocol.OpAck, 0)
	id := e.job("withdeps")

	w := e.worker(workerOpts{ID: "w", Caps: []string{"*"}, Exts: []string{protocol.ExtPrepareEnv}, Slots: 2})
	m := w.expect(protocol.OpPrepareEnv, 0)
	var pe protocol.PrepareEnvCommand
	if err := m.Unmarshal(&pe); err != nil || pe.EnvHash != d.EnvHash || pe.LockfileContent != lock {
		t.Fatalf("PREPARE_ENV %+v %v, want the plugin's env and lockfile", pe, err)
	}
	w.expectNone(protocol.OpDispatch, quiet)
	w.send(protocol.OpEnvReady, 0, protocol.EnvReadyPayload{EnvHash: d.EnvHash, InterpreterPath: "/envs/x/bin/python"})
	if got, dc := w.dispatch(); got != id || dc.EnvHash != d.EnvHash {
		t.Fatalf("DISPATCH %d env %q, want %d %s", got, dc.EnvHash, id, d.EnvHash)
	}

	// Once ready, later jobs go to it without another PREPARE_ENV.
	id2 := e.job("withdeps")
	if got, _ := w.dispatch(); got != id2 {
		t.Fatalf("second job %d, want %d", got, id2)
	}
	w.expectNone(protocol.OpPrepareEnv, quiet)
}

// A failed build fails the plugin's queued jobs with the installer's output.
func TestPrepareEnvFailureFailsJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	pub := e.dial("", false)
	d := deployCmd("baddeps", "1", "def parse(p): return []\n", "casparian-no-such-package==1.0\n")
	pub.send(protocol.OpDeploy, 0, d)
	pub.expect(protocol.OpAck, 0)
	id := e.job("baddeps")
	w := e.worker(workerOpts{ID: "w", Caps: []string{"*"}, Exts: []string{protocol.ExtPrepareEnv}})
	w.expect(protocol.OpPrepareEnv, 0)
	w.send(protocol.OpEnvReady, 0, protocol.EnvReadyPayload{EnvHash: d.EnvHash,
		Error: "ERROR: No matching distribution found for casparian-no-such-package==1.0"})
	eventually(t, waitFor, func() (bool, string) {
		j := e.get(id)
		return j.Status == store.StatusFailed, "job " + j.Status
	})
	j := e.get(id)
	if !strings.Contains(j.ErrorMessage, "No matching distribution") || !strings.Contains(j.ErrorMessage, "casparian requeue") {
		t.Errorf("error message %q", j.ErrorMessage)
	}
	w.expectNone(protocol.OpDispatch, quiet)
}
