//go:build !wasip1

package serve

import (
	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/goplugin"
)

// Main serves p as a native go-plugin executable (see sdk/goplugin.Serve).
// It never returns.
func Main(p sdk.Plugin) { goplugin.Serve(p) }
