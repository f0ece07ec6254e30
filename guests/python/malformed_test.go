package python_test

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/ipctest"
	"github.com/casparianflow/casparian/internal/testenv"
)

// rssBound is how much the host's resident set may grow while it refuses
// malformed streams, even those announcing gigabytes.
const rssBound = 256 << 20

// rawPlugin runs inside the real shim (HELLO sent by the SDK) and then
// bypasses the SDK's writer: it writes the bytes of its input file to the
// bridge socket as they are, and waits, so the host must fail the job on
// those bytes alone (not on the end of the session). The input file holds
// whole frames.
const rawPlugin = `
import os, time
from casparian_flow.sdk import BasePlugin

class Handler(BasePlugin):
    def consume(self, event):
        data = open(event.path, "rb").read()
        w = self._ctx._writer
        with w._lock:
            w._sock.sendall(data)
        if self.config.get("exit"):
            os._exit(0)
        time.sleep(60)
`

// batchFrame is a BATCH frame of topic "rows" whose header announces
// bodyLen bytes (2 + len("rows") + len(ipc) when 0) and carries ipc.
func batchFrame(ipc []byte, bodyLen uint32) []byte {
	if bodyLen == 0 {
		bodyLen = uint32(2 + 4 + len(ipc))
	}
	b := []byte{0x02, 0, 0, 0, 0, 0, 4, 'r', 'o', 'w', 's'}
	binary.BigEndian.PutUint32(b[1:], bodyLen)
	return append(b, ipc...)
}

// TestMalformedIPC replays every malformed Arrow IPC stream of ipctest as
// the body of a BATCH frame sent by a plugin: each fails the job with
// PROTOCOL naming the stream as invalid, nothing reaches the output, the
// host does not panic, every byte of Arrow memory comes back (newEnv's
// checked allocator) and the host's RSS stays within rssBound. Frames that
// announce 4 GiB, or 200 MiB of which a few bytes arrive, are refused the
// same way.
func TestMalformedIPC(t *testing.T) {
	e := newEnv(t, nil)
	watch, err := ipctest.StartRSSWatch()
	if err != nil {
		t.Fatal(err)
	}
	type replay struct {
		name  string
		frame []byte
		exit  bool // the plugin exits after writing (else it waits to be killed)
		kind  error
		want  string
		// partial: the batch before the damage may reach the output (the
		// job fails anyway).
		partial bool
	}
	var cases []replay
	for _, c := range ipctest.Malformed(8) {
		cases = append(cases, replay{name: c.Name, frame: batchFrame(c.Data, 0), kind: guest.ErrProtocol,
			want: `topic "rows": invalid Arrow IPC stream`})
	}
	v := ipctest.Valid(8)
	big := ipctest.Messages(v)[1]
	announce := func(body int64) []byte { // the batch announces body bytes and the frame holds them
		c := append([]byte(nil), v[:big.Body]...)
		binary.LittleEndian.PutUint64(c[big.BodyLenAt:], uint64(body))
		return c
	}
	cases = append(cases,
		replay{name: "frame of 4 GiB", frame: batchFrame(v, 0xFFFFFFFF), kind: guest.ErrResourceLimit, want: "BATCH frame of 4294967295 bytes"},
		replay{name: "frame and batch body of 200 MiB, 1 KiB sent, plugin exits", exit: true,
			frame: append(batchFrame(announce(200<<20), 200<<20), make([]byte, 1024)...), kind: guest.ErrProtocol, want: "invalid Arrow IPC stream"},
		replay{name: "frame one byte longer than its stream, plugin exits", exit: true,
			frame: batchFrame(v, uint32(2+4+len(v)+1)), kind: guest.ErrProtocol, want: "without an end-of-stream", partial: true},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(e.in, c.frame, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := e.runConfig(context.Background(), rawPlugin, map[string]any{"exit": c.exit})
			ge := mustGuestError(t, err, c.kind)
			if !strings.Contains(ge.Error(), c.want) {
				t.Errorf("%q not in %q", c.want, ge.Error())
			}
			t.Logf("%s", guest.JobError(42, err))
			if rows := out.Rows("rows"); rows != 0 && !c.partial {
				t.Errorf("%d rows reached the output", rows)
			}
			watch.Check(t, rssBound)
		})
	}
	g := watch.Check(t, rssBound)
	t.Logf("%d malformed streams refused; host peak RSS growth %.1f MiB", len(cases), float64(g)/(1<<20))
}

// runConfig loads plugin source and runs it on the env's input with cfg.
func (e *env) runConfig(ctx context.Context, src string, cfg map[string]any) (*testenv.Recorder, error) {
	e.t.Helper()
	path := filepath.Join(e.dir, "plugin.py")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	inst, err := e.rt.Load(ctx, guest.Plugin{Name: "test_plugin", Kind: guest.KindPython, Path: path})
	if err != nil {
		e.t.Fatal(err)
	}
	defer inst.Close(ctx)
	rec := &testenv.Recorder{}
	e.t.Cleanup(rec.Release)
	err = inst.Run(ctx, guest.Input{JobID: 42, FileVersionID: 7, Path: e.in, Config: cfg}, rec)
	return rec, err
}
