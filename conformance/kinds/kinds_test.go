package kinds_test

import (
	"testing"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/conformance/kinds"
	"github.com/casparianflow/casparian/internal/testenv"
)

// The shipped guest kinds pass the whole suite.

func config(t *testing.T) kinds.Config {
	return kinds.Config{Python: testenv.Python(t), SourceDir: testenv.RepoRoot(), WorkDir: t.TempDir()}
}

func TestPythonGuest(t *testing.T) { conformance.TestGuest(t, kinds.Python(config(t))) }

func TestGoPluginGuest(t *testing.T) { conformance.TestGuest(t, kinds.GoPlugin(config(t))) }

func TestWASMGuest(t *testing.T) { conformance.TestGuest(t, kinds.WASM(config(t))) }
