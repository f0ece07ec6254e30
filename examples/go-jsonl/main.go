// Command go-jsonl is the example Go plugin, one source for both guest kinds:
//
//	go build -o jsonl ./examples/go-jsonl                                          # go-plugin executable
//	GOOS=wasip1 GOARCH=wasm go build -tags arrow_json_stdlib -buildmode=c-shared -o jsonl.wasm ./examples/go-jsonl  # WASM module
//	casparian run --plugin jsonl      --output out examples/go-jsonl/data
//	casparian run --plugin jsonl.wasm --output out examples/go-jsonl/data
//
// make examples builds both into bin/examples/.
package main

import (
	"github.com/casparianflow/casparian/examples/go-jsonl/jsonl"
	"github.com/casparianflow/casparian/sdk/serve"
)

func main() { serve.Main(jsonl.Plugin{}) }
