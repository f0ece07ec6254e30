package main

import (
	"encoding/json"
	"os"

	hplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	sdkgp "github.com/casparianflow/casparian/sdk/goplugin"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// serveRaw serves the plugin as serve.Main does (same handshake, plugin set
// and service), with a gRPC stream interceptor that lets a job of mode
// "raw" put arbitrary bytes on the wire: the SDK serializes the job's batch
// as usual, and the interceptor sends the bytes of the job's input file as
// that batch's IPC stream instead, in chunks of "chunk" bytes (64 KiB by
// default), the last one marked last. The malformed IPC tests use it
// (CF_TEST_RAW=1) to replay broken streams through the real go-plugin and
// gRPC path.
func serveRaw() {
	hplugin.Serve(&hplugin.ServeConfig{
		HandshakeConfig: sdkgp.Handshake,
		Plugins:         hplugin.PluginSet{sdkgp.PluginName: &sdkgp.GRPCPlugin{Impl: plugin{}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.StreamInterceptor(rawInterceptor))...)
		},
	})
	os.Exit(0)
}

func rawInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &rawStream{ServerStream: ss})
}

// rawStream is one Process call's stream.
type rawStream struct {
	grpc.ServerStream
	path  string // the input file of a "raw" job
	chunk int
	sent  bool // the raw bytes went out; the SDK's own chunks are dropped
}

func (s *rawStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*pluginpb.ProcessRequest); ok && err == nil {
		var cfg map[string]any
		_ = json.Unmarshal(req.GetConfigJson(), &cfg)
		if cfg["mode"] == "raw" {
			s.path, s.chunk = req.GetPath(), 64<<10
			if n, ok := cfg["chunk"].(float64); ok && n > 0 {
				s.chunk = int(n)
			}
		}
	}
	return err
}

func (s *rawStream) SendMsg(m any) error {
	ev, ok := m.(*pluginpb.Event)
	if !ok || s.path == "" || ev.GetChunk() == nil {
		return s.ServerStream.SendMsg(m)
	}
	if s.sent {
		return nil
	}
	s.sent = true
	data, err := os.ReadFile(s.path)
	if err != nil {
		return err
	}
	topic := ev.GetChunk().GetTopic()
	for i := 0; ; i += s.chunk {
		end := min(i+s.chunk, len(data))
		last := end == len(data)
		c := &pluginpb.Chunk{Topic: topic, Data: data[i:end], Last: last}
		if err := s.ServerStream.SendMsg(&pluginpb.Event{Kind: &pluginpb.Event_Chunk{Chunk: c}}); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}
