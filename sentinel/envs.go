package sentinel

import (
	"context"
	"fmt"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
)

// Plugin environments. A plugin published with requirements has an
// env_hash; its jobs go only to workers that have that environment. A
// worker that provisions environments (protocol.ExtPrepareEnv) lists the
// ones it has in IDENTIFY and HEARTBEAT; when a job waits for an
// environment a capable worker lacks, the sentinel sends it PREPARE_ENV
// once and dispatches nothing of that plugin to it until ENV_READY. A
// failed build (ENV_READY with an error) fails the plugin's queued jobs
// with the installer's output. Workers without the extension (v4 peers)
// get such jobs as before and run them with their own interpreter.

// prepareRetry is how long a PREPARE_ENV may go unanswered before it is
// sent again.
const prepareRetry = 15 * time.Minute

type cachedEnvs struct {
	envs map[string]store.EnvSpec
	at   time.Time
}

// pluginEnvs returns the environments of the plugins, cached like
// pluginInfo.
func (s *Sentinel) pluginEnvs(ctx context.Context) (map[string]store.EnvSpec, error) {
	if s.envCache != nil && time.Since(s.envCache.at) < pluginCacheTTL {
		return s.envCache.envs, nil
	}
	envs, err := s.st.PluginEnvs(ctx)
	if err != nil {
		return nil, err
	}
	s.envCache = &cachedEnvs{envs: envs, at: time.Now()}
	return envs, nil
}

// envExclusions returns the plugins whose environment w lacks, asking w to
// build the ones that have queued jobs.
func (s *Sentinel) envExclusions(ctx context.Context, w *worker) ([]string, error) {
	if !w.exts[protocol.ExtPrepareEnv] {
		return nil, nil
	}
	envs, err := s.pluginEnvs(ctx)
	if err != nil || len(envs) == 0 {
		return nil, err
	}
	var except, candidates []string
	for plugin, e := range envs {
		if w.envs[e.Hash] {
			continue
		}
		except = append(except, plugin)
		if at, ok := w.preparing[e.Hash]; ok && time.Since(at) < prepareRetry {
			continue
		}
		candidates = append(candidates, plugin)
	}
	// Only plugins with work waiting are worth an environment build; one
	// query for all of them.
	waiting, err := s.st.QueuedAmong(ctx, candidates)
	if err != nil {
		return nil, err
	}
	for _, plugin := range candidates {
		e := envs[plugin]
		if !waiting[plugin] {
			continue
		}
		if at, ok := w.preparing[e.Hash]; ok && time.Since(at) < prepareRetry {
			continue // two plugins sharing one environment
		}
		m, err := protocol.NewMessage(protocol.OpPrepareEnv, 0, protocol.PrepareEnvCommand{EnvHash: e.Hash, LockfileContent: e.Lockfile})
		if err != nil {
			return nil, err
		}
		if w.preparing == nil {
			w.preparing = map[string]time.Time{}
		}
		w.preparing[e.Hash] = time.Now()
		s.log.Info("asking a worker to build a plugin environment", "worker", w.id, "plugin", plugin, "env_hash", e.Hash)
		s.send(ctx, w, m)
	}
	return except, nil
}

// envReady handles ENV_READY.
func (s *Sentinel) envReady(ctx context.Context, w *worker, p *protocol.EnvReadyPayload) {
	if w == nil {
		return
	}
	delete(w.preparing, p.EnvHash)
	if p.Error == "" {
		if w.envs == nil {
			w.envs = map[string]bool{}
		}
		w.envs[p.EnvHash] = true
		s.log.Info("worker environment ready", "worker", w.id, "env_hash", p.EnvHash, "cached", p.Cached, "python", p.InterpreterPath)
		s.Wake()
		return
	}
	s.log.Warn("a worker could not build a plugin environment", "worker", w.id, "env_hash", p.EnvHash, "error", p.Error)
	envs, err := s.pluginEnvs(ctx)
	if err != nil {
		s.metrics.DBErrors.Inc()
		return
	}
	for plugin, e := range envs {
		if e.Hash != p.EnvHash {
			continue
		}
		msg := fmt.Sprintf("the environment of plugin %s (env %s) could not be built on worker %s:\n%s\n"+
			"fix the plugin's requirements and publish it again, then: casparian requeue --all-failed --plugin %s",
			plugin, shortHash(p.EnvHash), w.id, p.Error, plugin)
		ids, err := s.st.FailQueued(ctx, plugin, msg)
		if err != nil {
			s.metrics.DBErrors.Inc()
			s.log.Error("failing the jobs of an unbuildable environment", "plugin", plugin, "error", err)
			continue
		}
		for _, id := range ids {
			s.log.Warn(fmt.Sprintf("[Job %d] failed: the environment of plugin %s could not be built", id, plugin))
		}
	}
	s.updateGauges()
}

// setEnvs replaces what w reports having.
func setEnvs(w *worker, hashes []string) {
	w.envs = map[string]bool{}
	for _, h := range hashes {
		w.envs[h] = true
	}
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
