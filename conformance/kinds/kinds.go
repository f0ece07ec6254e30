// Package kinds holds the conformance harnesses of the guest kinds the
// product ships (Python, go-plugin, WASM) and builds their reference
// plugins. Tests use it to certify the shipped guests; `casparian
// conformance --guest KIND` uses it to run the suite outside `go test`.
package kinds

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host/guest"
)

// PythonSource is the Python reference plugin.
//
//go:embed refplugin.py
var PythonSource []byte

// Config says where a harness finds or builds its reference plugin.
type Config struct {
	// Python is the interpreter of the Python guest (with pyarrow).
	// Default: $CASPARIAN_PYTHON, else python3.
	Python string
	// Plugin is a reference plugin artifact to use as is: a go-plugin
	// executable or a .wasm module built from conformance/refplugin.
	Plugin string
	// SourceDir is the product's source tree, from which the Go reference
	// plugin is built (with `go build`) when Plugin is empty.
	SourceDir string
	// WorkDir receives built plugins, the Python plugin file and the WASM
	// compilation cache. Default: a new temporary directory.
	WorkDir string
}

func (c *Config) workDir() (string, error) {
	if c.WorkDir != "" {
		return c.WorkDir, os.MkdirAll(c.WorkDir, 0o755)
	}
	d, err := os.MkdirTemp("", "conformance-kinds-")
	if err == nil {
		c.WorkDir = d
	}
	return d, err
}

// Kinds lists the guest kinds with a harness here.
var Kinds = []guest.Kind{guest.KindPython, guest.KindGoPlugin, guest.KindWASM}

// For returns the harness of kind.
func For(kind guest.Kind, cfg Config) (conformance.Harness, error) {
	switch kind {
	case guest.KindPython:
		return Python(cfg), nil
	case guest.KindGoPlugin:
		return GoPlugin(cfg), nil
	case guest.KindWASM:
		return WASM(cfg), nil
	}
	return conformance.Harness{}, fmt.Errorf("no conformance harness for guest kind %q (want python, goplugin or wasm)", kind)
}

// Python is the harness of the Python guest.
func Python(cfg Config) conformance.Harness {
	py := cfg.Python
	if py == "" {
		py = os.Getenv("CASPARIAN_PYTHON")
	}
	if py == "" {
		py = "python3"
	}
	return conformance.Harness{
		Kind: guest.KindPython,
		NewRuntime: func(mem memory.Allocator) (guest.Runtime, error) {
			return python.New(python.Config{Python: py, Allocator: mem})
		},
		Plugin: func() (guest.Plugin, error) {
			dir, err := cfg.workDir()
			if err != nil {
				return guest.Plugin{}, err
			}
			path := filepath.Join(dir, "refplugin.py")
			if err := os.WriteFile(path, PythonSource, 0o644); err != nil {
				return guest.Plugin{}, err
			}
			return guest.Plugin{Name: "conformance-ref", Kind: guest.KindPython, Path: path}, nil
		},
	}
}

// GoPlugin is the harness of the go-plugin guest.
func GoPlugin(cfg Config) conformance.Harness {
	return conformance.Harness{
		Kind: guest.KindGoPlugin,
		NewRuntime: func(mem memory.Allocator) (guest.Runtime, error) {
			return goplugin.New(goplugin.Config{Allocator: mem, MaxBatchBytes: 1 << 30})
		},
		Plugin: func() (guest.Plugin, error) {
			path, err := goPlugin(&cfg, false)
			return guest.Plugin{Name: "conformance-ref", Kind: guest.KindGoPlugin, Path: path}, err
		},
	}
}

// WASM is the harness of the WASM guest: modules get 4 GiB of memory, so
// that the big-batch case fits.
func WASM(cfg Config) conformance.Harness {
	return conformance.Harness{
		Kind: guest.KindWASM,
		NewRuntime: func(mem memory.Allocator) (guest.Runtime, error) {
			dir, err := cfg.workDir()
			if err != nil {
				return nil, err
			}
			return wasm.New(wasm.Config{Allocator: mem, MemoryLimitPages: 65536, CacheDir: filepath.Join(dir, "wasm-cache")})
		},
		Plugin: func() (guest.Plugin, error) {
			path, err := goPlugin(&cfg, true)
			return guest.Plugin{Name: "conformance-ref", Kind: guest.KindWASM, Path: path}, err
		},
	}
}

var buildMu sync.Mutex

// goPlugin returns cfg.Plugin, or builds the Go reference plugin.
func goPlugin(cfg *Config, asWASM bool) (string, error) {
	if cfg.Plugin != "" {
		return filepath.Abs(cfg.Plugin)
	}
	if cfg.SourceDir == "" {
		return "", errors.New("no reference plugin: pass its path (built from conformance/refplugin), or the source tree to build it from")
	}
	dir, err := cfg.workDir()
	if err != nil {
		return "", err
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	out := filepath.Join(dir, "refplugin")
	args := []string{"build", "-trimpath", "-o"}
	env := append(os.Environ(), "CGO_ENABLED=0")
	if asWASM {
		out += ".wasm"
		args = []string{"build", "-trimpath", "-tags", "arrow_json_stdlib", "-buildmode=c-shared", "-o"}
		env = append(env, "GOOS=wasip1", "GOARCH=wasm")
	}
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	cmd := exec.Command("go", append(args, out, "./conformance/refplugin")...)
	cmd.Dir = cfg.SourceDir
	cmd.Env = env
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the reference plugin: %v\n%s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}
