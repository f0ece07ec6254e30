//go:build unix

package goplugin

import (
	"os"
	"os/signal"
	"syscall"
)

// watchParent makes the plugin exit with everything it started when the host
// goes away: stdin reaches EOF when the host closes it or dies (the host
// holds the only write end), and on Linux the host asks for SIGTERM on its
// death (Pdeathsig). Nothing is written on the way out: with the host gone,
// a write to stderr would raise SIGPIPE before the group is killed.
func watchParent() {
	go func() {
		buf := make([]byte, 512)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				break
			}
		}
		exitGroup()
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		exitGroup()
	}()
}

// exitGroup kills the plugin's process group (itself included) when the
// plugin leads its own group, as the host starts it, so children the plugin
// started die too (hashicorp/go-plugin#136); otherwise it just exits.
func exitGroup() {
	if pid := os.Getpid(); syscall.Getpgrp() == pid {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	os.Exit(1)
}
