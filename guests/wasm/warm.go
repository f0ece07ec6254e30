package wasm

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// warm is a module instance that ran _initialize and passed the ABI check.
// A run that succeeds gives its instance back to its module's idle list, so
// the next run of the same module skips instantiation (for a Go module,
// wazero evaluating the table and data segment initializers, then Go's
// runtime initialization: ~18 ms) and makes only its casparian_alloc,
// casparian_process and casparian_free calls.
type warm struct {
	mod            api.Module
	fs             *inputFS // the run's input; empty between runs
	stdout, stderr switchWriter
	runs           int       // runs served
	idleSince      time.Time // when it went back to the idle list
}

// attach points the instance's stdout and stderr at st's line writers.
func (w *warm) attach(st *runState) {
	w.stdout.set(st.stdout)
	w.stderr.set(st.stderr)
	st.mod = w.mod
}

// detach takes the run's input and writers away.
func (w *warm) detach() {
	w.fs.clear()
	w.stdout.set(nil)
	w.stderr.set(nil)
}

// switchWriter forwards to the current run's writer; with none it discards.
type switchWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *switchWriter) set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func (s *switchWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	if w == nil {
		return len(b), nil
	}
	return w.Write(b)
}

// newWarm instantiates m, calls _initialize and checks the ABI version.
// st receives what the module prints and logs meanwhile.
func (r *Runtime) newWarm(ctx context.Context, m *module, st *runState, label string) (*warm, error) {
	w := &warm{fs: &inputFS{}}
	w.stdout.set(st.stdout)
	w.stderr.set(st.stderr)
	mod, err := r.instantiate(ctx, m, st, w, label)
	if err != nil {
		return nil, err
	}
	w.mod = mod
	st.mod = mod
	if err := st.start(ctx, mod, m); err != nil {
		mod.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return w, nil
}

// take returns an idle instance of m, or nil when there is none.
func (r *Runtime) take(m *module) *warm {
	r.mu.Lock()
	w, stale := r.popIdle(m, time.Now())
	r.mu.Unlock()
	closeAll(stale)
	return w
}

// popIdle pops the most recently used idle instance of m; it also removes
// and returns those idle past WarmIdleTimeout. r.mu is held.
func (r *Runtime) popIdle(m *module, now time.Time) (w *warm, stale []*warm) {
	keep := m.idle[:0]
	for _, x := range m.idle {
		if now.Sub(x.idleSince) > r.cfg.WarmIdleTimeout {
			stale = append(stale, x)
		} else {
			keep = append(keep, x)
		}
	}
	clear(m.idle[len(keep):])
	m.idle = keep
	if n := len(m.idle); n > 0 {
		w = m.idle[n-1]
		m.idle[n-1] = nil
		m.idle = m.idle[:n-1]
	}
	return w, stale
}

// giveBack keeps w for a later run of m, unless it served its quota of runs
// (the caller counts them),
// holds more memory than a warm instance may, the idle list is full, or the
// module or runtime is going away; then it closes w.
func (r *Runtime) giveBack(m *module, w *warm) {
	w.detach()
	ok := !w.mod.IsClosed() && w.runs < r.cfg.MaxRunsPerInstance &&
		uint64(w.mod.Memory().Size()) <= r.cfg.MaxWarmMemoryBytes
	var stale []*warm
	r.mu.Lock()
	if ok && !r.closed && r.modules[m.hash] == m && len(m.idle) < r.cfg.MaxWarmInstances {
		w.idleSince = time.Now()
		m.idle = append(m.idle, w)
		w = nil
	}
	r.mu.Unlock()
	if w != nil {
		stale = append(stale, w)
	}
	closeAll(stale)
}

// dropIdle removes and returns every idle instance of m. r.mu is held.
func dropIdle(m *module) []*warm {
	idle := m.idle
	m.idle = nil
	return idle
}

func closeAll(ws []*warm) {
	for _, w := range ws {
		_ = w.mod.Close(context.Background())
	}
}

// WarmInstances returns how many idle module instances r keeps, over all
// modules.
func (r *Runtime) WarmInstances() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.modules {
		n += len(m.idle)
	}
	return n
}
