package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
)

var (
	examplesOnce sync.Once
	examplesDir  string
	examplesErr  string
)

// buildExamples builds examples/go-jsonl both ways, once per test binary:
// a go-plugin executable and a WASM module.
func buildExamples(t *testing.T) (goplugin, wasm string) {
	t.Helper()
	examplesOnce.Do(func() {
		dir, err := os.MkdirTemp("", "casparian-examples-")
		if err != nil {
			examplesErr = err.Error()
			return
		}
		for _, b := range []struct {
			env  []string
			args []string
		}{
			{[]string{"CGO_ENABLED=0"}, []string{"build", "-trimpath", "-o", filepath.Join(dir, "jsonl"), "./examples/go-jsonl"}},
			{[]string{"GOOS=wasip1", "GOARCH=wasm"}, []string{"build", "-trimpath", "-tags", "arrow_json_stdlib", "-buildmode=c-shared", "-o",
				filepath.Join(dir, "jsonl.wasm"), "./examples/go-jsonl"}},
		} {
			cmd := exec.Command("go", b.args...)
			cmd.Dir = testenv.RepoRoot()
			cmd.Env = append(os.Environ(), b.env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				examplesErr = "go " + strings.Join(b.args, " ") + ": " + err.Error() + "\n" + string(out)
				return
			}
		}
		examplesDir = dir
	})
	if examplesDir == "" {
		t.Fatal(examplesErr)
	}
	return filepath.Join(examplesDir, "jsonl"), filepath.Join(examplesDir, "jsonl.wasm")
}

func compareJSONL(t *testing.T, py string, args ...string) {
	t.Helper()
	cmd := exec.Command(py, append([]string{filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "compare.py")}, args...)...)
	out, err := cmd.CombinedOutput()
	t.Logf("compare.py:\n%s", out)
	if err != nil {
		t.Fatalf("the guest kinds' tables differ: %v", err)
	}
	if strings.Count(string(out), "identical in all") != 2 {
		t.Fatalf("compare.py did not report both topics identical")
	}
}

// The same Go plugin source built as a go-plugin executable and as a WASM
// module, and its Python twin, write equal Parquet tables under casparian run.
func TestExampleThreeGuestKinds(t *testing.T) {
	py := testenv.Python(t)
	bin := buildCLI(t)
	gp, wasm := buildExamples(t)
	data := filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "data")
	out := t.TempDir()
	for name, plugin := range map[string]string{"goplugin": gp, "wasm": wasm,
		"python": filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "jsonl_plugin.py")} {
		stdout, stderr, code := runCLI(t, bin, "run", "--plugin", plugin, "--output", filepath.Join(out, name),
			"--python", py, data)
		if code != 0 || !strings.Contains(stdout, "events") {
			t.Fatalf("%s: exit %d\nstdout:\n%s\nstderr:\n%s", name, code, stdout, stderr)
		}
	}
	compareJSONL(t, py, filepath.Join(out, "goplugin"), filepath.Join(out, "wasm"), filepath.Join(out, "python"))
}

// The three guest kinds run under the daemons too: one sentinel, one worker
// over ipc://, jobs enqueued with the CLI for each kind.
func TestClusterThreeGuestKinds(t *testing.T) {
	c := newCluster(t)
	bin := buildCLI(t)
	gp, wasm := buildExamples(t)
	data := filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "data")
	for _, p := range []struct{ name, file string }{
		{"jsonl_go", gp}, {"jsonl_wasm", wasm},
		{"jsonl_py", filepath.Join(testenv.RepoRoot(), "examples", "go-jsonl", "jsonl_plugin.py")},
	} {
		stdout, stderr, code := runCLI(t, bin, "enqueue", "--database", c.db, "--plugin", p.name, "--plugin-file", p.file,
			"--sink", "events=parquet://"+p.name+"/events", "--sink", "errors=parquet://"+p.name+"/errors", data)
		if code != 0 {
			t.Fatalf("enqueue %s: exit %d\n%s%s", p.name, code, stdout, stderr)
		}
	}
	c.startSentinel()
	c.startWorker("worker-all", c.ipc)
	c.waitDone(9, 3*time.Minute)
	compareJSONL(t, c.py, "--ignore-lineage", filepath.Join(c.out, "jsonl_go"), filepath.Join(c.out, "jsonl_wasm"),
		filepath.Join(c.out, "jsonl_py"))
}
