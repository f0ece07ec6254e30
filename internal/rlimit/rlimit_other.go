//go:build !linux

package rlimit

// Apply does nothing outside Linux.
func (l Limits) Apply(pid int) error { return nil }
