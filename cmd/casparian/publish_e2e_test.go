package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
)

// Publishing end to end with the real binary and daemons: an unknown key
// is refused, a trusted key publishes a Python and a WASM plugin with
// routing patterns, publishing again is idempotent, and a scan of a mixed
// folder gives each file exactly the plugin its pattern routes it to.
func TestPublishAndRoute(t *testing.T) {
	c := newCluster(t)
	bin := buildCLI(t)
	_, wasmMod := buildExamples(t)
	keys := filepath.Join(c.dir, "keys")
	run := cliRunner(t, bin)
	run(0, "keys", "generate", "--dir", keys)
	if st, err := os.Stat(filepath.Join(keys, "publisher.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", st, err)
	}
	pub := filepath.Join(keys, "publisher.pub")
	key := filepath.Join(keys, "publisher.key")
	slow := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")

	c.startSentinel("--scan-interval", "500ms")
	publishPy := []string{"publish", "--connect", c.tcp, "--key", key, "--publisher", "tester", "--pattern", "*.csv", slow}
	// Dry run: checks and signs, sends nothing.
	if out, _ := run(0, append([]string{"publish", "--dry-run"}, publishPy[1:]...)...); !strings.Contains(out, "dry run") {
		t.Errorf("dry run output:\n%s", out)
	}
	// Not yet trusted.
	if _, errOut := run(1, publishPy...); !strings.Contains(errOut, "unknown publisher key SHA256:") {
		t.Errorf("untrusted publish: %s", errOut)
	}
	run(0, "keys", "trust", "--database", c.db, "--name", "tester", pub)
	if out, _ := run(0, publishPy...); !strings.Contains(out, "deployed slow_plugin") || !strings.Contains(out, "tagged auto_slow_plugin") {
		t.Errorf("publish:\n%s", out)
	}
	run(0, publishPy...) // identical content: idempotent
	if out, _ := run(0, "publish", "--connect", c.tcp, "--key", key, "--pattern", "*.jsonl", wasmMod); !strings.Contains(out, "deployed jsonl") {
		t.Errorf("publish wasm:\n%s", out)
	}
	// A manifest whose artifact does not match its sha256 is refused.
	tampered := filepath.Join(c.dir, "tampered.json")
	manifestJSON := `{"manifest_version": 1, "name": "tampered", "kind": "wasm", "artifact": "` + wasmMod + `", "sha256": "` +
		strings.Repeat("0", 64) + `"}`
	if err := os.WriteFile(tampered, []byte(manifestJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut := run(1, "publish", "--connect", c.tcp, "--key", key, tampered); !strings.Contains(errOut, "but the manifest says") {
		t.Errorf("tampered artifact: %s", errOut)
	}
	// A manifest with an unknown field is refused with the field's name.
	if err := os.WriteFile(tampered, []byte(strings.Replace(manifestJSON, `"kind"`, `"colour": "red", "kind"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut := run(1, "publish", "--connect", c.tcp, "--key", key, tampered); !strings.Contains(errOut, `unknown field "colour"`) {
		t.Errorf("unknown manifest field: %s", errOut)
	}
	if out, _ := run(0, "keys", "list", "--database", c.db); !strings.Contains(out, "tester") {
		t.Errorf("keys list:\n%s", out)
	}

	root := filepath.Join(c.dir, "landing")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "a.csv"), []byte("0 4"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "data", "events-2026-11-01.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "events.jsonl"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "readme.txt"), []byte("no plugin"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(0, "source", "add", "--database", c.db, root)
	c.startWorker("w1", c.tcp, "--guests", "python,wasm")
	c.waitDone(2, 2*time.Minute)
	time.Sleep(time.Second)
	jobs := c.counts()
	if total(jobs) != 2 {
		t.Fatalf("jobs %v, want exactly 2 (a.csv → slow_plugin, events.jsonl → jsonl)", jobs)
	}
	out, _ := run(0, "jobs", "--database", c.db)
	for _, want := range []string{"slow_plugin", "jsonl"} {
		if !strings.Contains(out, want) {
			t.Errorf("jobs table lacks %s:\n%s", want, out)
		}
	}
}
