//go:build unix && !linux

package goplugin

import "syscall"

var noPdeathsig bool

// sysProcAttr puts the plugin in its own process group. Without Pdeathsig,
// the plugin's stdin watch alone stops it when the host dies.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
