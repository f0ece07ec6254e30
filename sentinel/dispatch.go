package sentinel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// dispatch fills every free slot of every capable worker. Workers are
// visited in rotating order so none is favoured; each visit claims half of
// the worker's free slots (rounded up) in one transaction, so jobs spread
// over workers and claims are still batched.
func (s *Sentinel) dispatch(ctx context.Context) {
	if ctx.Err() != nil || len(s.order) == 0 {
		return
	}
	// Rotate the start so the same worker is not always first.
	s.order = append(s.order[1:], s.order[0])
	exhausted := map[string]bool{} // workers whose capabilities match no due job
	now := time.Now()
	for _, w := range s.workers {
		s.checkQuiet(w, now)
	}
	for progress := true; progress; {
		progress = false
		for _, key := range slices.Clone(s.order) {
			w := s.workers[key]
			if w == nil || exhausted[key] || w.free() == 0 {
				continue
			}
			ok, err := s.dispatchSome(ctx, w)
			if err != nil {
				return // database trouble: try again at the next tick
			}
			if !ok {
				exhausted[key] = true
				continue
			}
			progress = true
		}
	}
}

// dispatchSome claims jobs for w's free slots and sends them. It
// reports false when no job w can run is due.
func (s *Sentinel) dispatchSome(ctx context.Context, w *worker) (bool, error) {
	start := time.Now()
	// Half the free slots (rounded up) per visit: batches claims, yet a
	// short queue still spreads over the workers.
	except, err := s.envExclusions(ctx, w)
	if err != nil {
		if ctx.Err() != nil {
			return false, err
		}
		s.metrics.DBErrors.Inc()
		s.log.Error("reading plugin environments failed", "worker", w.id, "error", err)
		return false, err
	}
	// Crash-looping plugins are left out of the batch; one of their jobs
	// at a time is claimed as a probe (crashloop.go).
	cs, err := s.st.ClaimNExcept(ctx, w.id, w.caps, append(except, s.loops.held()...), s.cfg.Lease, (w.free()+1)/2)
	if err == nil && len(cs) < w.free() {
		var probe []*store.Claimed
		probe, err = s.claimProbe(ctx, w, except)
		cs = append(cs, probe...)
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, err // shutting down
		}
		s.metrics.DBErrors.Inc()
		s.log.Error("claiming a job failed", "worker", w.id, "error", err)
		return false, err
	}
	if len(cs) == 0 {
		return false, nil
	}
	var first error
	for _, c := range cs {
		// Every claimed job is handled, even after an error: each is
		// RUNNING under a lease and must be sent or concluded.
		if _, err := s.dispatchClaimed(ctx, w, c, start); err != nil && first == nil {
			first = err
		}
	}
	return true, first
}

// dispatchClaimed builds and sends the DISPATCH of a claimed job, or
// concludes the job when it cannot be dispatched.
func (s *Sentinel) dispatchClaimed(ctx context.Context, w *worker, c *store.Claimed, start time.Time) (bool, error) {
	cmd, err := s.buildDispatch(ctx, c)
	if err != nil {
		if ctx.Err() != nil {
			return false, err // shutting down: the lease expires and the job is requeued
		}
		// Never leave the job RUNNING: fail it, with the reason. Only a job
		// that can never be dispatched fails for good; on database trouble
		// it is retried (with backoff) and this pass stops.
		msg := fmt.Sprintf("cannot dispatch: %v", err)
		out := store.Outcome{Status: store.ReceiptFailed, Error: msg, Retriable: !undispatchable(err)}
		if out.Retriable {
			s.metrics.DBErrors.Inc()
		}
		tr, cerr := s.st.Conclude(ctx, c.ID, c.Attempt, out)
		if cerr != nil {
			s.metrics.DBErrors.Inc()
			s.log.Error(fmt.Sprintf("[Job %d] could not fail an undispatchable job; the reaper will retry it", c.ID), "error", cerr)
		} else {
			s.countTransitions([]store.Transition{tr})
		}
		s.log.Warn(fmt.Sprintf("[Job %d] %s", c.ID, msg), "plugin", c.PluginName, "retried", out.Retriable)
		if out.Retriable {
			return false, err
		}
		return true, nil
	}
	m, err := protocol.NewMessage(protocol.OpDispatch, uint64(c.ID), cmd)
	if err != nil {
		return true, nil
	}
	w.jobs[c.ID] = &running{attempt: c.Attempt, plugin: c.PluginName, dispatched: time.Now()}
	if !s.send(ctx, w, m) {
		// w was evicted and its jobs (this one included) released.
		return true, nil
	}
	took := time.Since(start)
	s.metrics.JobsDispatched.Inc()
	s.metrics.DispatchTimeMicros.Add(float64(took.Microseconds()))
	s.metrics.DispatchLatency.Observe(took.Seconds())
	s.updateGauges()
	s.log.Debug("job dispatched", "job_id", c.ID, "plugin", c.PluginName, "worker", w.id, "attempt", c.Attempt,
		"path", cmd.FilePath)
	return true, nil
}

func (s *Sentinel) buildDispatch(ctx context.Context, c *store.Claimed) (*protocol.DispatchCommand, error) {
	path, err := s.st.FilePath(ctx, c.FileVersionID)
	if err != nil {
		return nil, err
	}
	info, err := s.pluginInfo(ctx, c.PluginName)
	if err != nil {
		if errors.Is(err, store.ErrNoActiveManifest) {
			return nil, fmt.Errorf("%w: deploy it (casparian enqueue --plugin-file, or DEPLOY)", err)
		}
		return nil, err
	}
	sinks, err := applyOverrides(info.Sinks, c.ConfigOverrides)
	if err != nil {
		return nil, overridesError{err}
	}
	cmd := &protocol.DispatchCommand{
		PluginName:    c.PluginName,
		FilePath:      path,
		FileVersionID: c.FileVersionID,
		EnvHash:       info.EnvHash,
		SourceCode:    info.SourceCode,
		ArtifactHash:  info.ArtifactHash,
		Attempt:       c.Attempt,
	}
	for _, k := range sinks {
		cmd.Sinks = append(cmd.Sinks, protocol.SinkConfig{Topic: k.Topic, URI: k.URI, Mode: k.Mode, SchemaDef: k.SchemaJSON})
	}
	return cmd, nil
}

// overridesError is a job's config_overrides that cannot be applied.
type overridesError struct{ error }

// undispatchable reports whether a buildDispatch error is about the job
// itself (docs/JOB_STATES.md), so that retrying it cannot help.
func undispatchable(err error) bool {
	var oe overridesError
	return errors.Is(err, store.ErrNoActiveManifest) || errors.Is(err, store.ErrFileMissing) ||
		errors.Is(err, store.ErrPathEscapesRoot) || errors.As(err, &oe)
}

// applyOverrides applies a job's config_overrides to its sinks. The
// accepted shape is {"sinks": {"TOPIC": "URI" | {"uri": "...", "mode": "..."}}}
// (a bare {"TOPIC": …} map is read the same way, as the original's Python
// sentinel stored it). Topics not yet configured are added.
func applyOverrides(sinks []store.Sink, overrides string) ([]store.Sink, error) {
	if overrides == "" || overrides == "{}" || overrides == "null" {
		return sinks, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(overrides), &raw); err != nil {
		return nil, fmt.Errorf("config_overrides is not a JSON object: %v", err)
	}
	if inner, ok := raw["sinks"]; ok {
		raw = nil
		if err := json.Unmarshal(inner, &raw); err != nil {
			return nil, fmt.Errorf(`config_overrides "sinks" is not a JSON object: %v`, err)
		}
	}
	out := slices.Clone(sinks)
	for topic, v := range raw {
		var k store.Sink
		var uri string
		if err := json.Unmarshal(v, &uri); err == nil {
			k = store.Sink{URI: uri}
		} else {
			var obj struct {
				URI  string `json:"uri"`
				Mode string `json:"mode"`
			}
			if err := json.Unmarshal(v, &obj); err != nil || obj.URI == "" {
				return nil, fmt.Errorf("config_overrides for topic %q: want a URI string or {\"uri\": …, \"mode\": …}", topic)
			}
			k = store.Sink{URI: obj.URI, Mode: obj.Mode}
		}
		k.Topic = topic
		if k.Mode == "" {
			k.Mode = "append"
		}
		if i := slices.IndexFunc(out, func(x store.Sink) bool { return x.Topic == topic }); i >= 0 {
			k.SchemaJSON = out[i].SchemaJSON
			out[i] = k
		} else {
			out = append(out, k)
		}
	}
	return out, nil
}
