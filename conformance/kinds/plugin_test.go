package kinds_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/conformance/kinds"
	"github.com/casparianflow/casparian/internal/testenv"
)

// A plugin author's check of their own plugin: the go-jsonl example, in
// Python and as a go-plugin executable, on the example's inputs.
func TestPluginFileExamples(t *testing.T) {
	root := testenv.RepoRoot()
	inputs, err := filepath.Glob(filepath.Join(root, "examples", "go-jsonl", "data", "*.jsonl"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no example inputs: %v", err)
	}
	exe := filepath.Join(t.TempDir(), "jsonl")
	cmd := exec.Command("go", "build", "-trimpath", "-o", exe, "./examples/go-jsonl")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, b)
	}
	opts := conformance.PluginOptions{Deterministic: true}
	t.Run("goplugin", func(t *testing.T) { kinds.TestPluginFile(t, exe, inputs, config(t), opts) })
	t.Run("python", func(t *testing.T) {
		kinds.TestPluginFile(t, filepath.Join(root, "examples", "go-jsonl", "jsonl_plugin.py"), inputs, config(t), opts)
	})
}
