// Package serve is the one entry point of a Go plugin's main, whatever it is
// built for. One main.go builds both ways:
//
//	package main
//
//	import "github.com/casparianflow/casparian/sdk/serve"
//
//	func main() { serve.Main(myplugin.Plugin{}) }
//
// `go build` makes a native go-plugin executable (serve_native.go, package
// sdk/goplugin: Main serves the plugin and never returns);
// `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` makes a WASM module
// for the sandboxed guest (serve_wasip1.go: Main registers the plugin and
// returns). The plugin's own code does not change.
package serve
