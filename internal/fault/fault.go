// Package fault injects crashes at named points of a job, for the fault
// suite: a process started with CASPARIAN_FAULT=<point> kills itself with
// SIGKILL the first time it reaches that point, as a power cut or an OOM
// kill would. Without the variable Hit does nothing (one environment
// lookup, done once).
package fault

import (
	"os"
	"sync"
	"syscall"
)

// The points a job passes, in order.
const (
	GuestRun    = "guest-run"    // the plugin is running (its first batch arrived)
	SinkWrite   = "sink-write"   // a batch was written to a sink's temporary file
	AfterCommit = "after-commit" // outputs renamed into place, CONCLUDE not sent
)

var (
	once  sync.Once
	point string
)

// Hit kills the process if CASPARIAN_FAULT names p.
func Hit(p string) {
	once.Do(func() { point = os.Getenv("CASPARIAN_FAULT") })
	if point != "" && point == p {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late; never return
	}
}
