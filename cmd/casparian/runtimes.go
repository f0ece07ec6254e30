package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host/guest"
)

// allKinds are the guest kinds the product ships, in the order they are set up.
var allKinds = []guest.Kind{guest.KindPython, guest.KindGoPlugin, guest.KindWASM}

// runtimeFlags configure the guest runtimes.
type runtimeFlags struct {
	python                      string
	connectTimeout, idleTimeout time.Duration
	wasmCache                   string
	wasmMemoryMiB               int
	wasmMaxRuns                 int
}

func (f *runtimeFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
	DurationVar(p *time.Duration, name string, value time.Duration, usage string)
	IntVar(p *int, name string, value int, usage string)
}) {
	fs.StringVar(&f.python, "python", "", "Python interpreter for Python plugins (default: $CASPARIAN_PYTHON, ./.venv/bin/python, python3)")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", python.DefaultConnectTimeout, "time a Python guest has to connect")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", python.DefaultIdleTimeout, "longest silence from a Python guest")
	fs.StringVar(&f.wasmCache, "wasm-cache", "", "directory of the WASM compilation cache (default: the user cache dir)")
	fs.IntVar(&f.wasmMemoryMiB, "wasm-memory", int(wasm.DefaultMemoryLimitPages/16), "memory limit of a WASM plugin instance, MiB")
	fs.IntVar(&f.wasmMaxRuns, "wasm-max-runs", wasm.DefaultMaxRunsPerInstance,
		"jobs one WASM module instance serves before a fresh one replaces it (1: a fresh instance per job, reproducible clocks and randomness)")
}

// parseKinds reads a --guests value ("python,goplugin,wasm").
func parseKinds(v string) ([]guest.Kind, error) {
	var out []guest.Kind
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		k := guest.Kind(s)
		if !slices.Contains(allKinds, k) {
			return nil, fmt.Errorf("unknown guest kind %q: want python, goplugin or wasm", s)
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no guest kind given: want python, goplugin and/or wasm")
	}
	return out, nil
}

// newRuntimes starts the runtimes of the given kinds. The Python runtime is
// preflighted (interpreter and pyarrow found) so a broken setup fails here,
// with advice, instead of in every job. concurrency is how many jobs run at
// once: the go-plugin and WASM guests keep that many warm processes or
// instances per plugin, so no job waits for a cold start in steady state.
// close releases them all.
func (f *runtimeFlags) newRuntimes(ctx context.Context, kinds []guest.Kind, concurrency int, log *slog.Logger) (map[guest.Kind]guest.Runtime, func(), error) {
	rts := map[guest.Kind]guest.Runtime{}
	closeAll := func() {
		for _, rt := range rts {
			_ = rt.Close(context.Background())
		}
	}
	for _, k := range kinds {
		switch k {
		case guest.KindPython:
			rt, err := python.New(python.Config{Python: pythonInterpreter(f.python), ConnectTimeout: f.connectTimeout,
				IdleTimeout: f.idleTimeout, Logger: log})
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			rts[k] = rt
			versions, err := rt.Preflight(ctx)
			if err != nil {
				closeAll()
				return nil, nil, err
			}
			log.Debug("python guest ready", "python", rt.Interpreter(), "versions", versions)
		case guest.KindGoPlugin:
			rt, err := goplugin.New(goplugin.Config{MaxIdlePerPlugin: concurrency,
				MaxIdle: max(goplugin.DefaultMaxIdle, concurrency), Logger: log})
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("go-plugin guest: %w", err)
			}
			rts[k] = rt
		case guest.KindWASM:
			if f.wasmMemoryMiB < 1 || f.wasmMemoryMiB > 4096 {
				closeAll()
				return nil, nil, fmt.Errorf("--wasm-memory %d: want 1 to 4096 MiB", f.wasmMemoryMiB)
			}
			if f.wasmMaxRuns < 1 {
				closeAll()
				return nil, nil, fmt.Errorf("--wasm-max-runs %d: want 1 or more", f.wasmMaxRuns)
			}
			rt, err := wasm.New(wasm.Config{CacheDir: f.wasmCache, MemoryLimitPages: uint32(f.wasmMemoryMiB * 16),
				MaxRunsPerInstance: f.wasmMaxRuns, MaxWarmInstances: concurrency, Logger: log})
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("WASM guest: %w", err)
			}
			rts[k] = rt
		}
	}
	return rts, closeAll, nil
}
