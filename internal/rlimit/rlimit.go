// Package rlimit applies resource limits to a guest's process (Python
// shims, go-plugin executables) right after it starts, with prlimit(2):
// before the plugin's own code runs (the interpreter or runtime is still
// starting), so an allocation of 10 GB, a runaway CPU loop, thousands of open
// files or a huge file written by a plugin fail the job, not the host.
package rlimit

// Limits are per-process resource limits; a zero field leaves that limit
// as the process inherited it. A limit is never raised above the hard limit
// the process already has.
type Limits struct {
	// AddressSpace caps virtual memory in bytes (RLIMIT_AS): an allocation
	// past it fails (Python: MemoryError; Go: the runtime aborts).
	AddressSpace uint64
	// OpenFiles caps file descriptors (RLIMIT_NOFILE).
	OpenFiles uint64
	// Processes caps the processes and threads of the user (RLIMIT_NPROC).
	// The kernel does not enforce it for root (CAP_SYS_RESOURCE).
	Processes uint64
	// CPUSeconds caps CPU time (RLIMIT_CPU); past it the kernel kills the
	// process (SIGXCPU, then SIGKILL).
	CPUSeconds uint64
	// FileSize caps the size of a file the process writes (RLIMIT_FSIZE):
	// writing past it fails with EFBIG.
	FileSize uint64
}

// Defaults are what the subprocess guests use unless configured otherwise:
// generous for real plugins (pyarrow, pandas and gRPC start well within
// them), tight enough that a runaway plugin cannot take the machine.
func Defaults() Limits {
	return Limits{AddressSpace: 8 << 30, OpenFiles: 4096, Processes: 4096, FileSize: 1 << 30}
}

// Zero reports whether l sets no limit.
func (l Limits) Zero() bool { return l == Limits{} }

// Effective is what a guest configured with l and off applies: nothing when
// off, Defaults when l is zero, else l.
func (l Limits) Effective(off bool) Limits {
	switch {
	case off:
		return Limits{}
	case l.Zero():
		return Defaults()
	}
	return l
}
