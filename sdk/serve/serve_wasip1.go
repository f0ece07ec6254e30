//go:build wasip1

package serve

import (
	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/wasm"
)

// Main serves p as a WASM reactor module: it registers p with package
// sdk/wasm and returns at once (the host, not main, drives the module).
// Build with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared.
func Main(p sdk.Plugin) { wasm.Main(p) }
