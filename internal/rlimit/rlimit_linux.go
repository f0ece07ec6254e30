package rlimit

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Apply sets l on the running process pid.
func (l Limits) Apply(pid int) error {
	for _, r := range []struct {
		res  int
		name string
		v    uint64
	}{
		{unix.RLIMIT_AS, "address space", l.AddressSpace},
		{unix.RLIMIT_NOFILE, "open files", l.OpenFiles},
		{unix.RLIMIT_NPROC, "processes", l.Processes},
		{unix.RLIMIT_CPU, "CPU seconds", l.CPUSeconds},
		{unix.RLIMIT_FSIZE, "file size", l.FileSize},
	} {
		if r.v == 0 {
			continue
		}
		var cur unix.Rlimit
		if err := unix.Prlimit(pid, r.res, nil, &cur); err != nil {
			return fmt.Errorf("read the %s limit of process %d: %w", r.name, pid, err)
		}
		v := r.v
		if cur.Max != unix.RLIM_INFINITY && v > cur.Max {
			v = cur.Max
		}
		hard := v
		if r.res == unix.RLIMIT_CPU && (cur.Max == unix.RLIM_INFINITY || v < cur.Max) {
			hard = v + 1 // SIGXCPU at the soft limit names the cause; SIGKILL a second later
		}
		if err := unix.Prlimit(pid, r.res, &unix.Rlimit{Cur: v, Max: hard}, nil); err != nil {
			return fmt.Errorf("limit the %s of process %d: %w", r.name, pid, err)
		}
	}
	return nil
}
