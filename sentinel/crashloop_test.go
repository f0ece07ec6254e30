package sentinel

import (
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

func crashed(msg string) protocol.JobReceipt {
	return protocol.JobReceipt{Status: protocol.StatusFailed, Retriable: true, ErrorKind: "CRASHED",
		ErrorMessage: "CRASHED: " + msg}
}

// A plugin whose attempts crash CrashLoopAfter times in a row is held to one
// job at a time, CrashLoopPause apart, while another plugin's jobs go on
// using every slot; one success lets its jobs run in parallel again.
func TestCrashLoopingPluginRunsOneAtATime(t *testing.T) {
	t.Parallel()
	const pause = 400 * time.Millisecond
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.CrashLoopAfter = 2; c.CrashLoopPause = pause }})
	e.plugin("bad")
	e.plugin("good")
	bad := []int64{e.job("bad"), e.job("bad"), e.job("bad"), e.job("bad")}
	w := e.worker(workerOpts{ID: "w", Caps: []string{"*"}, Slots: 8, Exts: ackExts})
	for range bad {
		w.dispatch()
	}
	m := e.s.Metrics()

	// Two crashes in a row: the plugin is crash-looping.
	w.conclude(bad[0], crashed("exit status 9"))
	w.conclude(bad[1], crashed("exit status 9"))
	concludedAt := time.Now()
	e.waitMetric("sentinel_plugins_crash_looping", m.CrashLooping, 1)

	// Healthy jobs enqueued now run at once, in parallel, while the
	// crashed jobs (due again after their short backoff) wait out the pause.
	good := []int64{e.job("good"), e.job("good"), e.job("good"), e.job("good")}
	e.s.Wake()
	var probe int64
	for seen := 0; seen < len(good); {
		id, _ := w.dispatch()
		if id == bad[0] || id == bad[1] {
			if probe != 0 {
				t.Fatalf("a second job of the crash-looping plugin (job %d) dispatched while job %d still runs", id, probe)
			}
			if d := time.Since(concludedAt); d < pause {
				t.Fatalf("job %d of the crash-looping plugin dispatched %s after the crash, want ≥ %s", id, d, pause)
			}
			probe = id
			continue
		}
		seen++
	}
	for _, id := range good {
		w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
		e.waitStatus(id, store.StatusCompleted)
	}
	// One probe at a time: the probe, then nothing more of "bad" while
	// it runs.
	if probe == 0 {
		probe, _ = w.dispatch()
	}
	if probe != bad[0] && probe != bad[1] {
		t.Fatalf("probe is job %d, want one of the crashed jobs %v", probe, bad[:2])
	}
	w.expectNone(protocol.OpDispatch, 2*pause)

	// A crash of the probe: the next one waits the pause again.
	w.conclude(probe, crashed("exit status 9"))
	crashAt := time.Now()
	next, _ := w.dispatch()
	if d := time.Since(crashAt); d < pause-50*time.Millisecond {
		t.Errorf("next probe (job %d) %s after the last crash, want ≥ %s", next, d, pause)
	}
	w.expectNone(protocol.OpDispatch, 2*pause)

	// A success closes the loop: the remaining job runs at once.
	w.conclude(next, protocol.JobReceipt{Status: protocol.StatusSuccess})
	e.waitMetric("sentinel_plugins_crash_looping", m.CrashLooping, 0)
	want := bad[0] + bad[1] - next // the other crashed job, still queued
	last, _ := w.dispatch()
	if last != want {
		t.Errorf("after the loop closed, dispatched job %d, want the requeued job %d", last, want)
	}
	for _, id := range []int64{bad[2], bad[3], last} {
		w.conclude(id, protocol.JobReceipt{Status: protocol.StatusSuccess})
		e.waitStatus(id, store.StatusCompleted)
	}
}

// Only failures of the plugin's process count: a full disk (SINK) or the
// plugin's own error do not make it crash-looping.
func TestCrashLikeFailures(t *testing.T) {
	for _, c := range []struct {
		rc   protocol.JobReceipt
		want bool
	}{
		{crashed("signal: killed"), true},
		{protocol.JobReceipt{Status: protocol.StatusFailed, Retriable: true, ErrorKind: "TIMEOUT"}, true},
		{protocol.JobReceipt{Status: protocol.StatusFailed, ErrorKind: "RESOURCE_LIMIT"}, true},
		{protocol.JobReceipt{Status: protocol.StatusFailed, Retriable: true, ErrorKind: "SINK"}, false},
		{protocol.JobReceipt{Status: protocol.StatusFailed, ErrorKind: "PLUGIN_ERROR"}, false},
		{protocol.JobReceipt{Status: protocol.StatusSuccess}, false},
		{protocol.JobReceipt{Status: protocol.StatusRejected}, false},
		// A worker without error kinds: its retriable failures but a sink's.
		{protocol.JobReceipt{Status: protocol.StatusFailed, Retriable: true, ErrorMessage: "[Job 3] CRASHED: exit status 2"}, true},
		{protocol.JobReceipt{Status: protocol.StatusFailed, Retriable: true, ErrorMessage: "[Job 3] SINK: no space left on device"}, false},
		{protocol.JobReceipt{Status: protocol.StatusFailed, ErrorMessage: "[Job 3] PLUGIN_ERROR: ValueError"}, false},
	} {
		if got := crashLike(&c.rc); got != c.want {
			t.Errorf("crashLike(%+v) = %v, want %v", c.rc, got, c.want)
		}
	}
}
