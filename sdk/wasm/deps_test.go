package wasm_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPluginSideDeps: what a WASM plugin links (sdk/wasm, sdk/serve for
// GOOS=wasip1) is the SDK, arrow-go and the standard library, never host
// code, wazero or ZeroMQ.
func TestPluginSideDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "github.com/casparianflow/casparian/sdk/wasm", "github.com/casparianflow/casparian/sdk/serve")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, bad := range []string{"tetratelabs/wazero", "go-zeromq", "casparian/host", "casparian/guests", "casparian/bridge",
			"casparian/sentinel", "casparian/worker", "casparian/internal", "casparian/sdk/goplugin", "hashicorp", "grpc"} {
			if strings.Contains(d, bad) {
				t.Errorf("the WASM plugin side depends on %s", d)
			}
		}
	}
	if !strings.Contains(string(out), "github.com/casparianflow/casparian/sdk\n") {
		t.Errorf("sdk/wasm does not depend on sdk? deps:\n%s", out)
	}
}
