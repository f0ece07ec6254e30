package goplugin_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/ipctest"
)

// rssBound is how much the host's resident set may grow while it refuses
// malformed streams, even those announcing gigabytes.
const rssBound = 256 << 20

// TestMalformedIPC replays every malformed Arrow IPC stream of ipctest
// through the real go-plugin and gRPC path: the test plugin, served with
// CF_TEST_RAW=1, sends its input file's bytes as a batch's IPC stream in
// Chunk events, in one chunk and in 7-byte chunks. Each fails the job with
// PROTOCOL naming the stream as invalid (RESOURCE_LIMIT when the stream
// announces a body above MaxBatchBytes), nothing reaches the output, the
// host does not panic, every byte of Arrow memory comes back (newEnv's
// checked allocator) and the host's RSS stays within rssBound.
func TestMalformedIPC(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.Env = []string{"CF_TEST_RAW=1"} })
	inst := e.load(guest.Plugin{})
	defer inst.Close(context.Background())
	watch, err := ipctest.StartRSSWatch()
	if err != nil {
		t.Fatal(err)
	}
	// Announced bodies above MaxBatchBytes (256 MiB) are the plugin's batch
	// being too large, refused before anything is read.
	tooLarge := map[string]bool{"body length of 4 GiB": true, "body length of 2^62": true, "body and buffer lengths of 4 GiB": true}
	type replay struct {
		name string
		data []byte
		kind error
		want string
	}
	var cases []replay
	for _, c := range ipctest.Malformed(8) {
		r := replay{name: c.Name, data: c.Data, kind: guest.ErrProtocol, want: `topic "free": invalid Arrow IPC stream`}
		if tooLarge[c.Name] {
			r.kind, r.want = guest.ErrResourceLimit, fmt.Sprintf(`a batch of topic "free" is larger than %d bytes`, goplugin.DefaultMaxBatchBytes)
		}
		cases = append(cases, r)
	}
	// A body of 200 MiB, under the cap, announced and never sent: the
	// stream ends after 1 KiB of it.
	v := ipctest.Valid(8)
	b := ipctest.Messages(v)[1]
	announced := append(append([]byte(nil), v[:b.Body]...), make([]byte, 1024)...)
	binary.LittleEndian.PutUint64(announced[b.BodyLenAt:], 200<<20)
	cases = append(cases, replay{name: "batch body of 200 MiB, 1 KiB sent", data: announced, kind: guest.ErrProtocol, want: "invalid Arrow IPC stream"})

	for _, chunk := range []int{64 << 10, 7} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/chunks of %d", c.name, chunk), func(t *testing.T) {
				if err := os.WriteFile(e.in, c.data, 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := e.run(context.Background(), inst, map[string]any{"mode": "raw", "chunk": chunk})
				ge := mustGuestError(t, err, c.kind)
				if !strings.Contains(ge.Message, c.want) {
					t.Errorf("%q not in %q", c.want, ge.Message)
				}
				if rows := out.Rows("free"); rows != 0 {
					t.Errorf("%d rows reached the output", rows)
				}
				watch.Check(t, rssBound)
			})
		}
	}
	g := watch.Check(t, rssBound)
	t.Logf("%d malformed streams refused; host peak RSS growth %.1f MiB", 2*len(cases), float64(g)/(1<<20))

	// A valid stream the same way succeeds (4 rows, as the plugin's Done
	// event counts).
	if err := os.WriteFile(e.in, ipctest.Valid(4), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := e.run(context.Background(), inst, map[string]any{"mode": "raw"})
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rows := out.Rows("free"); rows != 4 {
		t.Errorf("valid raw stream: %d rows, want 4", rows)
	}
}
