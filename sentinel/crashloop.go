package sentinel

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// Crash-loop damping. A plugin whose attempts keep crashing (its process
// dies, it hangs past its deadline, it hits a resource limit) would, with
// every job's own retries, take a large share of the cluster's slots: each
// crash costs a process start and a slot for as long as it takes to die, and
// a plugin with many queued jobs crashes on all of them in parallel. After
// CrashLoopAfter such failures in a row, with no success between, the
// plugin's jobs run one at a time, each at least CrashLoopPause after the
// previous one ended: its retries go on (each job still gets its attempts
// and fails with its last error), the other plugins keep the rest of the
// slots. One success closes the loop. This is a supervisor's restart
// intensity (Erlang/OTP) or Kubernetes' CrashLoopBackOff, per plugin.
type crashLoops struct {
	after int
	pause time.Duration
	m     map[string]*crashLoop // by plugin name
}

type crashLoop struct {
	failures int       // crash-like failures in a row
	probe    int64     // job id of the attempt in flight while looping (0: none)
	probeAt  time.Time // when the probe was dispatched
	next     time.Time // no probe before this
}

func (l *crashLoop) looping(after int) bool { return after > 0 && l.failures >= after }

func newCrashLoops(after int, pause time.Duration) *crashLoops {
	return &crashLoops{after: after, pause: pause, m: map[string]*crashLoop{}}
}

// held lists the plugins whose jobs the batch claim must skip: every
// crash-looping plugin (a probe is claimed separately, one job at a time).
func (c *crashLoops) held() []string {
	var out []string
	for p, l := range c.m {
		if l.looping(c.after) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// due lists the crash-looping plugins that may run one probe job now. A
// probe that has been out longer than stale (its CONCLUDE lost with its
// worker, the job requeued by the reaper) no longer holds the plugin.
func (c *crashLoops) due(now time.Time, stale time.Duration) []string {
	var out []string
	for p, l := range c.m {
		if !l.looping(c.after) || now.Before(l.next) {
			continue
		}
		if l.probe != 0 && now.Sub(l.probeAt) < stale {
			continue
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// probing records that plugin's probe job was dispatched.
func (c *crashLoops) probing(plugin string, id int64, now time.Time) {
	if l := c.m[plugin]; l != nil {
		l.probe, l.probeAt = id, now
	}
}

// idle defers plugin's next probe claim to at (none of its jobs was due).
func (c *crashLoops) idle(plugin string, at time.Time) {
	if l := c.m[plugin]; l != nil && at.After(l.next) {
		l.next = at
	}
}

// concluded records an attempt's outcome. It returns a message to log when
// the plugin starts or stops crash-looping.
func (c *crashLoops) concluded(plugin string, id int64, rc *protocol.JobReceipt, now time.Time) string {
	if c.after <= 0 || plugin == "" {
		return ""
	}
	l := c.m[plugin]
	switch {
	case rc.Status == protocol.StatusSuccess:
		if l == nil {
			return ""
		}
		delete(c.m, plugin)
		if l.looping(c.after) {
			return fmt.Sprintf("plugin %s recovered: [Job %d] succeeded after %d crashed attempts in a row; its jobs run in parallel again", plugin, id, l.failures)
		}
		return ""
	case crashLike(rc):
		if l == nil {
			l = &crashLoop{}
			c.m[plugin] = l
		}
		l.failures++
		if l.probe == id || !l.looping(c.after) {
			l.probe = 0
		}
		if l.looping(c.after) {
			l.next = now.Add(c.pause)
		}
		if l.failures == c.after {
			last := firstLine(rc.ErrorMessage)
			if !strings.HasPrefix(last, "[Job ") {
				last = fmt.Sprintf("[Job %d] %s", id, last)
			}
			return fmt.Sprintf("plugin %s is crash-looping: %d attempts in a row crashed, hung or hit a resource limit (last: %s); its jobs now run one at a time, %s apart, until one succeeds",
				plugin, l.failures, last, c.pause)
		}
	default:
		// Anything else (a plugin's own error, a rejection, an abort)
		// says nothing about crashing; it only ends a probe.
		if l != nil && l.probe == id {
			l.probe = 0
			l.next = now.Add(c.pause)
		}
	}
	return ""
}

// looping is the number of crash-looping plugins.
func (c *crashLoops) looping() int {
	n := 0
	for _, l := range c.m {
		if l.looping(c.after) {
			n++
		}
	}
	return n
}

// crashLike reports a failure of the plugin's process rather than of its
// input or its code: crashed, timed out, or over a resource limit. A sink
// failure (a full disk) is the host's, not the plugin's.
func crashLike(rc *protocol.JobReceipt) bool {
	if rc.Status != protocol.StatusFailed {
		return false
	}
	switch rc.ErrorKind {
	case "CRASHED", "TIMEOUT", "RESOURCE_LIMIT":
		return true
	case "":
		// A worker that does not send error kinds: its retriable
		// failures, less the sink's.
		return rc.Retriable && !strings.Contains(rc.ErrorMessage, "SINK:")
	}
	return false
}

// capable reports whether a worker with caps may run plugin.
func capable(caps []string, plugin string) bool {
	return slices.Contains(caps, "*") || slices.Contains(caps, plugin)
}

// claimProbe claims at most one job of a crash-looping plugin that is due
// for a probe and that w can run.
func (s *Sentinel) claimProbe(ctx context.Context, w *worker, except []string) ([]*store.Claimed, error) {
	now := time.Now()
	for _, p := range s.loops.due(now, 2*s.cfg.Lease) {
		if !capable(w.caps, p) || slices.Contains(except, p) {
			continue
		}
		cs, err := s.st.ClaimNExcept(ctx, w.id, []string{p}, nil, s.cfg.Lease, 1)
		if err != nil {
			return nil, err
		}
		if len(cs) > 0 {
			s.loops.probing(p, cs[0].ID, now)
			return cs, nil
		}
		// Nothing of p is due (its jobs wait out their backoff): look
		// again at the next poll, not at every dispatch pass.
		s.loops.idle(p, now.Add(s.cfg.PollInterval))
	}
	return nil, nil
}
