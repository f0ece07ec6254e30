package goplugin_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
)

// startEnv is an env whose plugin does something before the handshake
// (CF_TEST_PREHANDSHAKE) and records its start in a marker dir.
func startEnv(t *testing.T, pre string, startTimeout time.Duration) (*env, string) {
	markers := t.TempDir()
	e := newEnv(t, func(c *goplugin.Config) {
		c.StartTimeout = startTimeout
		c.Env = []string{"CF_TEST_PREHANDSHAKE=" + pre, "CF_TEST_MARKER_DIR=" + markers}
		c.Sandbox.Writable = []string{markers}
	})
	return e, markers
}

// Printing to stdout before the handshake fails at once, quoting the line.
func TestStdoutBeforeHandshake(t *testing.T) {
	const timeout = 10 * time.Second
	e, markers := startEnv(t, "print", timeout)
	start := time.Now()
	_, err := e.run(context.Background(), e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrProtocol)
	if d := time.Since(start); d > timeout/2 {
		t.Errorf("took %s, StartTimeout %s: the error should come at once", d, timeout)
	}
	if !strings.Contains(ge.Message, "wrote to stdout before the go-plugin handshake") ||
		!strings.Contains(ge.Message, "hello from main, before the handshake") {
		t.Errorf("message %q", ge.Message)
	}
	if !strings.Contains(ge.Hint, "serve.Main") {
		t.Errorf("hint %q", ge.Hint)
	}
	assertGone(t, startedPIDs(t, markers)...)
}

// Bytes without a newline, then nothing: a timeout that quotes them.
func TestPartialStdoutThenHang(t *testing.T) {
	e, markers := startEnv(t, "partial", time.Second)
	_, err := e.run(context.Background(), e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, `"no newline here"`) {
		t.Errorf("message %q", ge.Message)
	}
	assertGone(t, startedPIDs(t, markers)...)
}

// A plugin that hangs before the handshake fails after StartTimeout, not later.
func TestHangBeforeHandshake(t *testing.T) {
	const timeout = time.Second
	e, markers := startEnv(t, "hang", timeout)
	start := time.Now()
	_, err := e.run(context.Background(), e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if d := time.Since(start); d < timeout || d > timeout+3*time.Second {
		t.Errorf("failed after %s, StartTimeout %s", d, timeout)
	}
	if !strings.Contains(ge.Message, "did not complete the go-plugin handshake within 1s") {
		t.Errorf("message %q", ge.Message)
	}
	assertGone(t, startedPIDs(t, markers)...)
}

// Cancelling a job while its plugin starts kills the plugin at once.
func TestCancelDuringStart(t *testing.T) {
	e, markers := startEnv(t, "hang", 20*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	go func() { // cancel once the plugin runs (and hangs before its handshake)
		for {
			if ents, _ := os.ReadDir(markers); len(ents) > 0 {
				time.Sleep(50 * time.Millisecond)
				cancelled = time.Now()
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	_, err := e.run(ctx, e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	mustGuestError(t, err, guest.ErrCancelled)
	if d := time.Since(cancelled); d > 2*time.Second {
		t.Errorf("Run returned %s after the cancellation", d)
	}
	assertGone(t, startedPIDs(t, markers)...)
}

// A plugin whose Info never answers fails at StartTimeout too.
func TestInfoHangs(t *testing.T) {
	markers := t.TempDir()
	e := newEnv(t, func(c *goplugin.Config) {
		c.StartTimeout = 3 * time.Second // the handshake alone can take >1 s on a loaded 2-core machine
		c.Env = []string{"CF_TEST_INFO=hang", "CF_TEST_MARKER_DIR=" + markers}
		c.Sandbox.Writable = []string{markers}
	})
	start := time.Now()
	_, err := e.run(context.Background(), e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("failed after %s, StartTimeout 3s", d)
	}
	if !strings.Contains(ge.Message, "did not answer within 3s of its handshake") {
		t.Errorf("message %q", ge.Message)
	}
	assertGone(t, startedPIDs(t, markers)...)
}

// A plugin that exits before the handshake is CRASHED with its stderr.
func TestExitBeforeHandshake(t *testing.T) {
	e, _ := startEnv(t, "exit", 10*time.Second)
	_, err := e.run(context.Background(), e.load(guest.Plugin{}), map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrCrashed)
	if ge.ExitCode != 2 || !strings.Contains(ge.Stderr, "cannot start: missing configuration") {
		t.Errorf("exit code %d, stderr %q\n%s", ge.ExitCode, ge.Stderr, ge.Detail())
	}
}

// An executable that is not a plugin gets a hint saying what a plugin is.
func TestNotAPlugin(t *testing.T) {
	e := newEnv(t, nil)
	script := filepath.Join(t.TempDir(), "notaplugin")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'usage: notaplugin FILE' >&2\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := e.run(context.Background(), e.load(guest.Plugin{Name: "notaplugin", Path: script}), nil)
	ge := mustGuestError(t, err, guest.ErrCrashed)
	if !strings.Contains(ge.Message, "exited before it was ready") || !strings.Contains(ge.Hint, "serve.Main") ||
		!strings.Contains(ge.Stderr, "usage: notaplugin") {
		t.Errorf("%s", ge.Detail())
	}

	// A file that is not executable is refused at Load.
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.Load(context.Background(), guest.Plugin{Name: "plain", Path: plain}); err == nil {
		t.Fatal("Load of a non-executable file succeeded")
	}
}
