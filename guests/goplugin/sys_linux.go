package goplugin

import "syscall"

// noPdeathsig turns Pdeathsig off (tests use it to check the plugin's stdin
// watch on its own).
var noPdeathsig bool

// sysProcAttr puts the plugin in its own process group (so it and anything
// it starts can be killed together) and asks Linux to send it SIGTERM when
// the spawner thread, which lives as long as the host's runtime, dies. The
// SDK answers SIGTERM by killing its process group; a plugin without the SDK
// just dies of it.
func sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if noPdeathsig {
		a.Pdeathsig = 0
	}
	return a
}
