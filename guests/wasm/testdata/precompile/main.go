// Command precompile loads a WASM plugin once with the WASM guest, which
// compiles it into a compilation cache directory, and prints how long that
// took. The tests run it outside the race detector, which makes wazero's
// compiler about ten times slower.
//
// Usage: precompile MODULE.wasm CACHE_DIR
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host/guest"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: precompile MODULE.wasm CACHE_DIR")
		os.Exit(2)
	}
	ctx := context.Background()
	rt, err := wasm.New(wasm.Config{CacheDir: os.Args[2]})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer rt.Close(ctx)
	start := time.Now()
	inst, err := rt.Load(ctx, guest.Plugin{Name: "precompile", Kind: guest.KindWASM, Path: os.Args[1]})
	if err != nil {
		fmt.Fprintln(os.Stderr, guest.JobError(0, err))
		os.Exit(1)
	}
	fmt.Println(time.Since(start))
	inst.Close(ctx)
}
