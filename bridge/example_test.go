package bridge_test

import (
	"bytes"
	"fmt"

	"github.com/casparianflow/casparian/bridge"
)

// A guest ends a successful session with an END frame: type 0x05, a 4-byte
// big-endian length, then canonical JSON.
func ExampleWriter_WriteJSON() {
	var buf bytes.Buffer
	w := bridge.NewWriter(&buf)
	if err := w.WriteJSON(bridge.FrameEnd, bridge.EndMessage{Batches: 2, Rows: 5}); err != nil {
		panic(err)
	}
	fmt.Printf("% x\n%s\n", buf.Bytes()[:5], buf.Bytes()[5:])

	f, err := bridge.NewReader(&buf, bridge.Limits{}).Next()
	if err != nil {
		panic(err)
	}
	var end bridge.EndMessage
	if err := f.Decode(&end); err != nil {
		panic(err)
	}
	fmt.Println(f.Type, end.Rows)
	// Output:
	// 05 00 00 00 16
	// {"batches":2,"rows":5}
	// END 5
}
