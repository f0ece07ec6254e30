package main_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// The fault tests' Go plugin (testdata/faultplugin), built at test time, once
// per test binary and kind.
var faultPlugins struct {
	mu    sync.Mutex
	dir   string
	built map[string]string // name → path
}

// faultPlugin builds testdata/faultplugin as "goplugin" (an executable),
// "poison" (an executable that crashes on every input) or "wasm" (a module)
// and returns its path.
func faultPlugin(t *testing.T, kind string) string {
	t.Helper()
	faultPlugins.mu.Lock()
	defer faultPlugins.mu.Unlock()
	if p, ok := faultPlugins.built[kind]; ok {
		return p
	}
	if faultPlugins.dir == "" {
		dir, err := os.MkdirTemp("", "casparian-faultplugin-")
		if err != nil {
			t.Fatal(err)
		}
		faultPlugins.dir, faultPlugins.built = dir, map[string]string{}
	}
	out := filepath.Join(faultPlugins.dir, kind)
	args := []string{"build", "-trimpath", "-o", out}
	env := []string{"CGO_ENABLED=0"}
	switch kind {
	case "goplugin":
	case "poison":
		args = append(args, "-ldflags", "-X main.variant=poison")
	case "wasm":
		out += ".wasm"
		args = []string{"build", "-trimpath", "-buildmode=c-shared", "-o", out}
		env = []string{"GOOS=wasip1", "GOARCH=wasm"}
	default:
		t.Fatalf("faultPlugin: unknown kind %q", kind)
	}
	cmd := exec.Command("go", append(args, "./cmd/casparian/testdata/faultplugin")...)
	cmd.Dir = testenv.RepoRoot()
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	faultPlugins.built[kind] = out
	return out
}

// enqueueBinary registers a go-plugin executable or WASM module as plugin
// (its manifest, as casparian enqueue --plugin-file stores it) and enqueues
// one job per input, in one transaction.
func (c *cluster) enqueueBinary(plugin, artifact string, inputs []string) []int64 {
	c.t.Helper()
	ctx := context.Background()
	m, err := manifest.Resolve(artifact)
	if err != nil {
		c.t.Fatal(err)
	}
	m.Name = plugin
	src := m.Encode()
	sum := sha256.Sum256(src)
	if _, err := c.st.AddPlugin(ctx, store.PluginSpec{Name: plugin, SourceCode: string(src), ArtifactHash: hex.EncodeToString(sum[:])}); err != nil {
		c.t.Fatal(err)
	}
	specs := make([]store.JobSpec, 0, len(inputs))
	for _, in := range inputs {
		fv, err := c.st.AddFile(ctx, store.FileSpec{Root: filepath.Dir(in), RelPath: filepath.Base(in)})
		if err != nil {
			c.t.Fatal(err)
		}
		specs = append(specs, store.JobSpec{FileVersionID: fv, PluginName: plugin})
	}
	ids, err := c.st.EnqueueMany(ctx, specs)
	if err != nil {
		c.t.Fatal(err)
	}
	return ids
}
