package kinds

import (
	"context"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/host/manifest"
)

// TestPluginFile is conformance.TestPlugin for a plugin file as
// `casparian run --plugin` takes it (a .py file, a go-plugin executable, a
// .wasm module or a manifest): it picks the guest kind from the file,
// starts that kind's runtime with a checked allocator, and runs the
// plugin on every input. cfg gives the Python interpreter, if needed.
//
//	func TestMyPlugin(t *testing.T) {
//		kinds.TestPluginFile(t, "bin/myplugin.wasm", []string{"testdata/a.csv"}, kinds.Config{},
//			conformance.PluginOptions{Deterministic: true})
//	}
func TestPluginFile(t *testing.T, path string, inputs []string, cfg Config, opts ...conformance.PluginOptions) {
	t.Helper()
	m, err := manifest.Resolve(path)
	if err != nil {
		t.Fatalf("plugin %s: %v", path, err)
	}
	h, err := For(m.Kind, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	rt, err := h.NewRuntime(mem)
	if err != nil {
		t.Fatalf("%s runtime: %v", m.Kind, err)
	}
	defer rt.Close(context.Background())
	conformance.TestPlugin(t, rt, mem, m.Plugin(), inputs, opts...)
}
