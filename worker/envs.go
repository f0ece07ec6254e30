package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/worker/envs"
)

type envResult struct {
	hash, python string
	cached       bool
	err          error
}

// envHashes lists the environments this worker has (nil without Envs).
func (w *Worker) envHashes() []string {
	if w.cfg.Envs == nil {
		return nil
	}
	// The Manager owns its directory (one worker per directory): the list
	// only changes when a build finishes here, which clears the cache, or
	// by eviction during a build. The TTL bounds staleness anyway.
	if !w.envListAt.IsZero() && time.Since(w.envListAt) < envListTTL {
		return w.envList
	}
	list, err := w.cfg.Envs.List()
	if err != nil {
		w.log.Warn("listing the plugin environments failed", "error", err)
		return nil
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		out = append(out, e.Hash)
	}
	slices.Sort(out)
	w.envList, w.envListAt = out, time.Now()
	return out
}

// envListTTL bounds how long the environment list sent with heartbeats is
// reused before the directory is read again.
const envListTTL = time.Minute

// prepareEnv builds an environment in the background; the loop answers
// ENV_READY when it is done.
func (w *Worker) prepareEnv(ctx context.Context, p protocol.PrepareEnvCommand) {
	if w.lockfiles == nil {
		w.lockfiles = map[string]string{}
	}
	w.lockfiles[p.EnvHash] = p.LockfileContent
	cached := w.cfg.Envs.Has(p.EnvHash)
	w.log.Info("building a plugin environment", "env_hash", p.EnvHash, "cached", cached)
	go func() {
		python, release, err := w.cfg.Envs.Ensure(ctx, p.EnvHash, p.LockfileContent)
		if err == nil {
			release()
		}
		select {
		case w.envDone <- envResult{hash: p.EnvHash, python: python, cached: cached, err: err}:
		case <-ctx.Done():
		}
	}()
}

// envReady reports a finished build to the sentinel.
func (w *Worker) envReady(r envResult) error {
	w.envListAt = time.Time{} // the next heartbeat lists the environments again
	p := protocol.EnvReadyPayload{EnvHash: r.hash, InterpreterPath: r.python, Cached: r.cached}
	if r.err != nil {
		p.InterpreterPath = ""
		p.Error = r.err.Error() // an *envs.InstallError quotes the installer's last lines
		w.log.Warn("a plugin environment could not be built", "env_hash", r.hash, "error", r.err)
	} else {
		w.log.Info("plugin environment ready", "env_hash", r.hash, "python", r.python, "cached", r.cached)
	}
	m, err := protocol.NewMessage(protocol.OpEnvReady, 0, p)
	if err != nil {
		return err
	}
	return w.sendMsg(m)
}

// envPython returns the interpreter of an environment this worker has,
// marked in use until release.
func (w *Worker) envPython(ctx context.Context, hash string) (string, func(), error) {
	if w.lockfiles == nil {
		w.lockfiles = map[string]string{}
	}
	if lock, ok := w.lockfiles[hash]; ok {
		if !w.cfg.Envs.Has(hash) {
			return "", nil, fmt.Errorf("environment %s is not built on this worker (it was evicted or its build failed)", shortHash(hash))
		}
		return w.cfg.Envs.Ensure(ctx, hash, lock) // built: returns at once
	}
	// Built before this worker started: its requirements are kept with it.
	if w.cfg.Envs.Has(hash) {
		if lock, err := os.ReadFile(filepath.Join(w.cfg.Envs.Dir(), hash, envs.LockfileName)); err == nil {
			w.lockfiles[hash] = string(lock)
			return w.cfg.Envs.Ensure(ctx, hash, string(lock))
		}
	}
	return "", nil, fmt.Errorf("environment %s is not on this worker", shortHash(hash))
}
