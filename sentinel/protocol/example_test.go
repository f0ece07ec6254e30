package protocol_test

import (
	"fmt"

	"github.com/casparianflow/casparian/sentinel/protocol"
)

// The sentinel sends a DISPATCH to a worker through its ROUTER socket, and
// the worker's DEALER decodes it.
func Example() {
	msg, err := protocol.NewMessage(protocol.OpDispatch, 42, protocol.DispatchCommand{
		PluginName: "csv_parser",
		FilePath:   "/data/in/sales.csv",
		Sinks:      []protocol.SinkConfig{{Topic: "output", URI: "parquet://csv_parser_output.parquet"}},
		EnvHash:    "system",
		Attempt:    1,
	})
	if err != nil {
		panic(err)
	}
	frames, err := protocol.EncodeRouter([]byte("w-1"), msg) // [identity, header, payload]
	if err != nil {
		panic(err)
	}
	fmt.Printf("header % x\n", frames[1])

	// The DEALER receives [header, payload].
	got, err := protocol.Decode(frames[1:])
	if err != nil {
		panic(err) // real receivers log and drop
	}
	var cmd protocol.DispatchCommand
	if err := got.Unmarshal(&cmd); err != nil {
		panic(err)
	}
	fmt.Println(got.OpCode, got.JobID, cmd.PluginName, cmd.Sinks[0].Mode, cmd.Attempt)
	// Output:
	// header 04 02 00 00 00 00 00 00 00 00 00 2a 00 00 00 db
	// DISPATCH 42 csv_parser append 1
}
