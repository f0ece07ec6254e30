package wasm

import (
	"time"

	"github.com/casparianflow/casparian/internal/filehash"
)

// SetRacyWindow changes how long a module file must be left alone before a
// Load remembers its hash, and returns a function that restores it.
func SetRacyWindow(d time.Duration) (restore func()) {
	old := filehash.RacyWindow
	filehash.RacyWindow = d
	return func() { filehash.RacyWindow = old }
}

// Reads returns how many times r read a module's bytes.
func Reads(r *Runtime) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads
}

// Modules returns how many compiled modules r keeps.
func Modules(r *Runtime) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.modules)
}
