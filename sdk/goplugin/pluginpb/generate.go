// Package pluginpb is the generated code of plugin.proto: the gRPC service
// between the Casparian host and a Go plugin served by sdk/goplugin.
//
// The generated files are committed, so building needs no protoc. To
// regenerate them after editing plugin.proto, run `go generate` here. gen.sh
// installs the pinned protoc-gen-go and protoc-gen-go-grpc into a temp dir
// and runs $PROTOC, which defaults to protoc; where protoc is not installed,
// grpcio-tools from PyPI bundles one:
//
//	python3 -m venv /tmp/protoc-venv && /tmp/protoc-venv/bin/pip install grpcio-tools==1.85.1
//	PROTOC="/tmp/protoc-venv/bin/python -m grpc_tools.protoc" go generate ./sdk/goplugin/pluginpb
package pluginpb

//go:generate sh gen.sh
