package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/internal/testenv"
)

// A libzmq peer (pyzmq, as the original system's Python workers) with the
// shared secret over ZeroMQ PLAIN is registered and probed by a sentinel
// that requires it; with a wrong password or none it gets nothing.
func TestPlainInteropWithLibzmq(t *testing.T) {
	c := newCluster(t)
	bin := buildCLI(t)
	secret := filepath.Join(c.dir, "secret")
	if out, errOut, rc := runCLI(t, bin, "keys", "secret", secret); rc != 0 {
		t.Fatalf("keys secret: %s%s", out, errOut)
	}
	pw := readSecret(t, secret)
	c.startSentinel("--secret-file", secret)
	script := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "interop", "plain_peer.py")
	peer := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(c.py, append([]string{script, c.tcp}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("plain_peer.py %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// OpHeartbeat (4): the probe a registered worker gets.
	if got := peer(pw); got != "reply 4" {
		t.Errorf("libzmq peer with the secret: %q, want the sentinel's probe (reply 4)\n%s", got, c.sentinel.out.String())
	}
	if !strings.Contains(c.sentinel.out.String(), "worker=libzmq-peer") {
		t.Errorf("the sentinel did not register the libzmq peer:\n%s", c.sentinel.out.String())
	}
	if got := peer("not-the-secret-at-all"); got != "no reply" {
		t.Errorf("libzmq peer with a wrong password: %q", got)
	}
	if got := peer(); got != "no reply" {
		t.Errorf("libzmq peer without credentials: %q", got)
	}
}

func readSecret(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
