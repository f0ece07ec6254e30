package wasm_test

import (
	"context"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/ipctest"
)

// rssBound is how much the host's resident set may grow while it refuses
// malformed streams, even those announcing gigabytes.
const rssBound = 256 << 20

// TestMalformedIPC replays every malformed Arrow IPC stream of ipctest
// through casparian.emit of a hand-made module (no SDK in between): each
// fails the job with PROTOCOL and a message naming the stream as invalid,
// nothing is emitted, the host does not panic, every byte of Arrow memory
// comes back (newEnv's checked allocator), and the host's RSS stays within
// rssBound. So do emit calls that announce a 4 GiB stream, or one running
// past the module's memory.
func TestMalformedIPC(t *testing.T) {
	e := newEnv(t, nil)
	watch, err := ipctest.StartRSSWatch()
	if err != nil {
		t.Fatal(err)
	}
	type replay struct {
		name    string
		ipc     []byte
		dataLen int64 // emit's ipc_len as an i32 (-1 is 4 GiB - 1); default len(ipc)
		kind    error
		want    string
		partial bool // the batch before the damage may reach the output (the job fails anyway)
	}
	var cases []replay
	for _, c := range ipctest.Malformed(8) {
		cases = append(cases, replay{name: c.Name, ipc: c.Data, kind: guest.ErrProtocol, want: `topic "rows": invalid Arrow IPC stream`})
	}
	v := ipctest.Valid(8)
	cases = append(cases,
		replay{name: "ipc_len of 4 GiB", ipc: v, dataLen: -1, kind: guest.ErrResourceLimit, want: "batch of 4294967295 bytes"},
		replay{name: "ipc_len past the memory", ipc: v, dataLen: 62 << 10, kind: guest.ErrProtocol, want: "lies outside the module's 65536-byte memory"},
		replay{name: "end marker cut short", ipc: v, dataLen: int64(len(v) - 1), kind: guest.ErrProtocol, want: "invalid Arrow IPC stream", partial: true})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := c.dataLen
			if n == 0 {
				n = int64(len(c.ipc))
			}
			process := cat(emitCall(offTopic, 4, offIPC, n), []byte{opDrop}, i32c(0))
			inst, err := e.loadBytes(handmade{version: 1, process: process, ipc: c.ipc}.bytes())
			if err != nil {
				t.Fatal(guest.JobError(0, err))
			}
			out, err := e.run(context.Background(), inst, nil)
			ge := mustGuestError(t, err, c.kind)
			if !strings.Contains(ge.Message, c.want) {
				t.Errorf("%q not in %q", c.want, ge.Message)
			}
			if rows := out.Rows("rows"); rows != 0 && !c.partial {
				t.Errorf("%d rows emitted", rows)
			}
			watch.Check(t, rssBound)
		})
	}
	g := watch.Check(t, rssBound)
	t.Logf("%d malformed streams refused; host peak RSS growth %.1f MiB", len(cases), float64(g)/(1<<20))
}
