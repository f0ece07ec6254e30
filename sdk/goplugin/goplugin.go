// Package goplugin serves an [sdk.Plugin] as a native plugin executable over
// hashicorp/go-plugin and gRPC, and holds the contract both ends of that
// boundary share: the handshake, the plugin-set name and the gRPC service
// (package pluginpb). The host side is guests/goplugin.
//
// A plugin's main calls [Serve] (or serve.Main, which builds for WASM too):
//
//	func main() { serve.Main(myplugin.Plugin{}) }
//
// # Wire
//
// go-plugin starts the executable with the magic cookie in its environment;
// the plugin answers with go-plugin's one-line stdout handshake (core
// protocol 1, app protocol [ProtocolVersion], transport grpc, and with
// AutoMTLS its one-time server certificate). The host then calls the Plugin
// service of pluginpb on the plugin's Unix socket: Info once per process,
// Process once per job. Process streams Events: every [sdk.Output.Emit]
// becomes one Arrow IPC stream (schema, the batch, end-of-stream marker) cut
// into Chunk events of at most the requested chunk size (1 MiB by default,
// never more than 3 MiB), so no gRPC message comes near gRPC's 4 MiB default
// cap whatever the batch size, and the host decodes a batch while it
// arrives. Records of [sdk.Output.Logger] travel as Log events on the same
// stream, so they stay in order with the batches and carry the job. The
// stream ends with one Done or Failure event.
//
// # Process hygiene
//
// Anything the plugin writes to stdout before the handshake breaks go-plugin
// (hashicorp/go-plugin#164): the host then fails the start with an error
// quoting the line. After the handshake, os.Stdout and os.Stderr go straight
// to the host over the process's own pipes (go-plugin's asynchronous stdio
// relay loses the last lines of a process that exits, hashicorp/go-plugin#93,
// #308); the host forwards them as log records, hclog JSON lines with their
// level and fields. go-plugin's own logger writes hclog JSON to stderr.
//
// When started by the Casparian host ([EnvHost] set), the plugin also watches
// its parent: the host holds the write end of the plugin's stdin, so when the
// host dies, even by SIGKILL, stdin reaches EOF; and on Linux the host asks
// for SIGTERM on its death (Pdeathsig). On either, the plugin kills its whole
// process group (itself and anything it started) so nothing is orphaned
// (hashicorp/go-plugin#10, #136, #210).
//
// This package is plugin-side: it imports the SDK, arrow-go, go-plugin, gRPC
// and the standard library, never host code, wazero or ZeroMQ.
package goplugin

import (
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// ProtocolVersion is the application protocol version in the go-plugin
// handshake: the version of the pluginpb service. A host refuses a plugin
// built against another version with a message saying to rebuild it.
const ProtocolVersion = 1

// Handshake is the go-plugin handshake both ends use. The magic cookie only
// tells a plugin it was started by a Casparian host (a UX check, not
// security; the host checks the binary's SHA-256 and uses AutoMTLS).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "CASPARIAN_FLOW_PLUGIN",
	MagicCookieValue: "8a1c3f0e6d2b4c97a5e1f0b3d7c2a9e4",
}

// PluginName is the name of the one plugin in the go-plugin plugin set.
const PluginName = "casparian"

// SDKVersion is reported in Info, for diagnostics.
const SDKVersion = "0.1.0"

// EnvHost is set (to "1") by the Casparian host in the plugin's environment.
// It turns on the parent watch described in the package doc.
const EnvHost = "CASPARIAN_GOPLUGIN_HOST"

// Chunk size bounds: the host asks for a chunk size, the plugin clamps it.
const (
	MinChunkBytes     = 16 << 10
	MaxChunkBytes     = 3 << 20
	DefaultChunkBytes = 1 << 20
)

// GRPCPlugin is the go-plugin plugin of both ends: the plugin serves Impl,
// the host dispenses a pluginpb.PluginClient (Impl nil).
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the plugin to serve (plugin side only).
	Impl sdk.Plugin
}

var _ plugin.GRPCPlugin = (*GRPCPlugin)(nil)

// GRPCServer registers the Plugin service for Impl.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return fmt.Errorf("goplugin: no plugin to serve")
	}
	pluginpb.RegisterPluginServer(s, newServer(p.Impl))
	return nil
}

// GRPCClient returns a pluginpb.PluginClient on the plugin's connection.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return pluginpb.NewPluginClient(c), nil
}

// Serve serves p as a go-plugin executable and never returns: the process
// exits when the host stops it (or dies). Run directly rather than by a
// host, it prints go-plugin's "This binary is a plugin" message and exits 1.
func Serve(p sdk.Plugin) {
	realStdout, realStderr = os.Stdout, os.Stderr
	if os.Getenv(EnvHost) != "" && os.Getenv(Handshake.MagicCookieKey) == Handshake.MagicCookieValue {
		watchParent()
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &GRPCPlugin{Impl: p}},
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "go-plugin",
			Output:     os.Stderr,
			Level:      hclog.Info,
			JSONFormat: true,
		}),
	})
	os.Exit(0)
}
