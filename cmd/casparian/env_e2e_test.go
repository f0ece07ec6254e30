package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// A Python plugin published with requirements runs in its own environment:
// the worker builds it once (a real pip install of "six" from the package
// index) when the sentinel asks, and reuses it for later jobs; a plugin whose
// requirement does not exist fails its jobs with pip's explanation.
func TestPluginEnvironments(t *testing.T) {
	c := newCluster(t)
	bin := buildCLI(t)
	run := cliRunner(t, bin)
	if _, errOut, _ := runCLI(t, c.py, "-c", "import six"); errOut == "" {
		t.Fatal("the base interpreter has six: the test would prove nothing")
	}
	keys := filepath.Join(c.dir, "keys")
	run(0, "keys", "generate", "--dir", keys)
	run(0, "keys", "trust", "--database", c.db, "--name", "tester", filepath.Join(keys, "publisher.pub"))
	reqs := filepath.Join(c.dir, "requirements.txt")
	bad := filepath.Join(c.dir, "bad.txt")
	if err := os.WriteFile(reqs, []byte("six==1.16.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("casparian-no-such-package-xyz==1.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "six_plugin.py")
	badPlugin := filepath.Join(c.dir, "bad_plugin.py")
	src, _ := os.ReadFile(plugin)
	if err := os.WriteFile(badPlugin, append(src, []byte("\n# variant\n")...), 0o644); err != nil {
		t.Fatal(err)
	}

	c.startSentinel("--scan-interval", "500ms")
	key := filepath.Join(keys, "publisher.key")
	run(0, "publish", "--connect", c.tcp, "--key", key, "--pattern", "*.csv", "--requirements", reqs, plugin)
	run(0, "publish", "--connect", c.tcp, "--key", key, "--pattern", "*.bad", "--requirements", bad, badPlugin)
	root := filepath.Join(c.dir, "in")
	for _, n := range []string{"a.csv", "b.csv", "x.bad"} {
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(0, "source", "add", "--database", c.db, root)
	c.startWorker("w1", c.tcp, "--envs-dir", filepath.Join(c.dir, "venvs"))

	waitFor(t, 5*time.Minute, "the two six_plugin jobs and the failed bad_plugin job", func() bool {
		m := c.counts()
		return m[store.StatusCompleted] == 2 && m[store.StatusFailed] == 1
	})
	failed, err := c.st.List(t.Context(), store.Filter{Statuses: []string{store.StatusFailed}})
	if err != nil || len(failed) != 1 {
		t.Fatalf("failed jobs %v %v", failed, err)
	}
	if msg := failed[0].ErrorMessage; failed[0].PluginName != "bad_plugin" || !strings.Contains(msg, "casparian-no-such-package-xyz") ||
		!strings.Contains(msg, "could not be built") {
		t.Errorf("bad_plugin's job: %s", msg)
	}
	// The six environment was built once for both jobs.
	if n := strings.Count(c.sentinel.out.String(), "worker environment ready"); n != 1 {
		t.Errorf("%d ENV_READY for six, want 1 (built once, then reused)", n)
	}
	ents, _ := os.ReadDir(filepath.Join(c.dir, "venvs"))
	envDirs := 0
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			envDirs++
		}
	}
	if envDirs != 1 {
		t.Errorf("%d environments on disk, want 1 (six; the failed one leaves nothing)", envDirs)
	}
	out, _ := run(0, "plugins", "--database", c.db)
	if !strings.Contains(out, "six_plugin") || !strings.Contains(out, "bad_plugin") {
		t.Errorf("plugins:\n%s", out)
	}
}
