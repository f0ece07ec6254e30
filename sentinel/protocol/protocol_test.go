package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden fixtures in testdata/golden")

func goldenPath(name string) string { return filepath.Join("testdata", "golden", name) }

func i64(v int64) *int64 { return &v }

// goldenMessages holds one representative message per opcode. The files are
// shared with non-Go peers: see readGolden for the format.
var goldenMessages = []struct {
	file string
	msg  func() (Message, error)
}{
	{"unknown.hex", func() (Message, error) { return NewMessage(OpUnknown, 0, nil) }},
	{"identify.hex", func() (Message, error) {
		return NewMessage(OpIdentify, 0, IdentifyPayload{Capabilities: []string{"*"}, WorkerID: "worker-1a2b3c4d",
			Slots: 4, ProtocolExtensions: []string{ExtAttempt, ExtSlots}})
	}},
	{"dispatch.hex", func() (Message, error) {
		return NewMessage(OpDispatch, 42, DispatchCommand{
			PluginName: "csv_parser", FilePath: "/data/in/sales.csv",
			Sinks: []SinkConfig{
				{Topic: "output", URI: "parquet://csv_parser_output.parquet", Mode: ModeAppend},
				{Topic: "errors", URI: "sqlite:///tmp/out.db", Mode: ModeReplace, SchemaDef: `{"id":"int64"}`},
			},
			FileVersionID: 7, EnvHash: "system", SourceCode: "def parse(path):\n    return []\n",
			ArtifactHash: strings.Repeat("ab", 32), Attempt: 1,
		})
	}},
	{"abort.hex", func() (Message, error) { return NewMessage(OpAbort, 42, nil) }},
	{"heartbeat.hex", func() (Message, error) {
		return NewMessage(OpHeartbeat, 0, HeartbeatPayload{Status: WorkerAlive, CurrentJobID: i64(42),
			ActiveJobCount: 2, ActiveJobIDs: []int64{42, 43}, Slots: 4, FreeSlots: 2})
	}},
	{"conclude.hex", func() (Message, error) {
		return NewMessage(OpConclude, 42, JobReceipt{Status: StatusSuccess,
			Metrics:   map[string]int64{"rows": 1000, "rows.output": 990, "rows.errors": 10},
			Artifacts: []map[string]string{{"topic": "output", "uri": "parquet://csv_parser_output.parquet"}},
			Attempt:   1})
	}},
	{"conclude_failed.hex", func() (Message, error) {
		return NewMessage(OpConclude, 43, JobReceipt{Status: StatusFailed, ErrorMessage: "[Job 43] PLUGIN_ERROR: ValueError: bad row <7> & more"})
	}},
	{"err.hex", func() (Message, error) {
		return NewMessage(OpErr, 0, ErrorPayload{Message: "env provisioning failed", Traceback: "Traceback (most recent call last):\n  ...\n"})
	}},
	{"reload.hex", func() (Message, error) { return NewMessage(OpReload, 0, nil) }},
	{"prepare_env.hex", func() (Message, error) {
		return NewMessage(OpPrepareEnv, 0, PrepareEnvCommand{EnvHash: strings.Repeat("0f", 32),
			LockfileContent: "version = 1\n[[package]]\nname = \"pandas\"\n", PythonVersion: "3.11"})
	}},
	{"env_ready.hex", func() (Message, error) {
		return NewMessage(OpEnvReady, 0, EnvReadyPayload{EnvHash: strings.Repeat("0f", 32),
			InterpreterPath: "/var/cache/casparian/envs/0f0f/bin/python", Cached: true})
	}},
	{"deploy.hex", func() (Message, error) {
		return NewMessage(OpDeploy, 0, DeployCommand{PluginName: "csv_parser", Version: "1.2.0",
			SourceCode: "def parse(path):\n    return []\n", LockfileContent: "", EnvHash: "system",
			ArtifactHash: strings.Repeat("cd", 32), Signature: strings.Repeat("ef", 64), PublisherName: "ann",
			PublisherEmail: "ann@example.com", SystemRequirements: []string{"libpq"}})
	}},
	{"ack.hex", func() (Message, error) {
		return NewMessage(OpAck, 0, DeployResponse{Success: true, Message: "deployed csv_parser 1.2.0", PluginID: i64(12)})
	}},
}

// writeGolden writes frames in the shared fixture format: '#' comment lines,
// then one "frame: <hex>" line per ZeroMQ frame (empty hex = empty frame).
func writeGolden(t *testing.T, name, comment string, frames [][]byte) {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(comment, "\n") {
		fmt.Fprintf(&b, "# %s\n", line)
	}
	for _, f := range frames {
		fmt.Fprintf(&b, "frame: %s\n", hex.EncodeToString(f))
	}
	if err := os.WriteFile(goldenPath(name), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readGolden parses the fixture format (Python: bytes.fromhex on the text
// after "frame:").
func readGolden(tb testing.TB, name string) [][]byte {
	tb.Helper()
	data, err := os.ReadFile(goldenPath(name))
	if err != nil {
		tb.Fatal(err)
	}
	var frames [][]byte
	for _, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, "frame:")
		if !ok {
			continue
		}
		f, err := hex.DecodeString(strings.TrimSpace(rest))
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		frames = append(frames, f)
	}
	return frames
}

func TestGoldenHeaderExample(t *testing.T) {
	h := Header{OpCode: OpDispatch, JobID: 0x123456789ABCDEF0, PayloadLen: 0x12345678}
	got := h.Bytes()
	want := []byte{0x04, 0x02, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0, 0x12, 0x34, 0x56, 0x78}
	if !bytes.Equal(got[:], want) {
		t.Fatalf("header packs as % x, want % x", got, want)
	}
	if *update {
		writeGolden(t, "header_example.hex", "header only: DISPATCH, job_id 0x123456789ABCDEF0, payload_len 0x12345678 (§2.2)", [][]byte{got[:]})
	}
	frames := readGolden(t, "header_example.hex")
	if len(frames) != 1 || !bytes.Equal(frames[0], want) {
		t.Fatalf("header_example.hex holds %x", frames)
	}
	back, err := ParseHeader(frames[0])
	if err != nil || back != h {
		t.Fatalf("ParseHeader = %+v, %v; want %+v", back, err, h)
	}
}

func TestGoldenMessages(t *testing.T) {
	seen := map[OpCode]bool{}
	for _, g := range goldenMessages {
		t.Run(g.file, func(t *testing.T) {
			m, err := g.msg()
			if err != nil {
				t.Fatal(err)
			}
			seen[m.OpCode] = true
			frames, err := Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			if *update {
				comment := fmt.Sprintf("%s job_id=%d\npayload: %s", m.OpCode, m.JobID, m.Payload)
				writeGolden(t, g.file, comment, frames)
			}
			want := readGolden(t, g.file)
			if len(want) != 2 || !bytes.Equal(frames[0], want[0]) || !bytes.Equal(frames[1], want[1]) {
				t.Fatalf("encoding drifted from %s:\n got %x\nwant %x", g.file, frames, want)
			}
			got, err := Decode(want)
			if err != nil {
				t.Fatal(err)
			}
			if got.OpCode != m.OpCode || got.JobID != m.JobID || !bytes.Equal(got.Payload, m.Payload) {
				t.Fatalf("decoded %+v, want %+v", got, m)
			}
			if v := NewPayload(got.OpCode); v != nil {
				if err := got.Unmarshal(v); err != nil {
					t.Fatal(err)
				}
				again, err := Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, m.Payload) {
					t.Fatalf("payload round trip:\n got %s\nwant %s", again, m.Payload)
				}
			} else if len(got.Payload) != 0 {
				t.Fatalf("%v carries a payload", got.OpCode)
			}
		})
	}
	for op := OpUnknown; op <= maxOpCode; op++ {
		if !seen[op] {
			t.Errorf("no golden message for %v", op)
		}
	}
}

func TestGoldenRouter(t *testing.T) {
	m, err := goldenMessages[2].msg() // DISPATCH
	if err != nil {
		t.Fatal(err)
	}
	id := []byte("w-1733245082000000000")
	frames, err := EncodeRouter(id, m)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		writeGolden(t, "dispatch_router.hex", "DISPATCH as the ROUTER sends it: [identity, header, payload]", frames)
	}
	want := readGolden(t, "dispatch_router.hex")
	if len(want) != 3 || !bytes.Equal(bytes.Join(frames, []byte{0}), bytes.Join(want, []byte{0})) {
		t.Fatalf("router encoding drifted:\n got %x\nwant %x", frames, want)
	}
	gotID, got, err := DecodeRouter(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotID, id) || got.OpCode != OpDispatch || got.JobID != 42 || !bytes.Equal(got.Payload, m.Payload) {
		t.Fatalf("DecodeRouter = %q, %+v", gotID, got)
	}
}

func TestOpCodeString(t *testing.T) {
	want := []string{"UNKNOWN", "IDENTIFY", "DISPATCH", "ABORT", "HEARTBEAT", "CONCLUDE", "ERR", "RELOAD",
		"PREPARE_ENV", "ENV_READY", "DEPLOY", "ACK"}
	for i, w := range want {
		if got := OpCode(i).String(); got != w {
			t.Errorf("OpCode(%d) = %q, want %q", i, got, w)
		}
		if !OpCode(i).Valid() {
			t.Errorf("OpCode(%d) not valid", i)
		}
	}
	if got := OpCode(12).String(); got != "OpCode(12)" || OpCode(12).Valid() {
		t.Errorf("OpCode(12) = %q", got)
	}
}

func TestRoundTrip(t *testing.T) {
	payloads := [][]byte{nil, {}, []byte(`{}`), bytes.Repeat([]byte{0xff}, 1000)}
	jobIDs := []uint64{0, 1, 1<<31 - 1, 1<<63 + 5, ^uint64(0)}
	for op := OpUnknown; op <= maxOpCode; op++ {
		for _, id := range jobIDs {
			for _, p := range payloads {
				m := Message{OpCode: op, JobID: id, Payload: p}
				frames, err := Encode(m)
				if err != nil {
					t.Fatal(err)
				}
				if len(frames) != 2 || len(frames[0]) != HeaderSize || frames[1] == nil {
					t.Fatalf("Encode(%v) = %x", op, frames)
				}
				got, err := Decode(frames)
				if err != nil {
					t.Fatal(err)
				}
				if got.OpCode != op || got.JobID != id || !bytes.Equal(got.Payload, p) || got.Payload == nil {
					t.Fatalf("round trip %+v -> %+v", m, got)
				}
				rf, err := EncodeRouter([]byte{0, 1, 2}, m)
				if err != nil {
					t.Fatal(err)
				}
				rid, rgot, err := DecodeRouter(rf)
				if err != nil || !bytes.Equal(rid, []byte{0, 1, 2}) || rgot.OpCode != op || rgot.JobID != id {
					t.Fatalf("router round trip: %q %+v %v", rid, rgot, err)
				}
			}
		}
	}
}

func TestHeaderLenient(t *testing.T) {
	// Reserved bytes are ignored and bytes after 16 are ignored.
	h := []byte{0x04, 0x05, 0xAB, 0xCD, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2, 'x', 'y', 'z'}
	m, err := Decode([][]byte{h, []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	if m.OpCode != OpConclude || m.JobID != 9 || string(m.Payload) != "{}" {
		t.Fatalf("got %+v", m)
	}
}

func TestReloadHeaderOnly(t *testing.T) {
	hb := Header{OpCode: OpReload}.Bytes()
	m, err := Decode([][]byte{hb[:]})
	if err != nil {
		t.Fatal(err)
	}
	if m.OpCode != OpReload || m.Payload == nil || len(m.Payload) != 0 {
		t.Fatalf("got %+v", m)
	}
	if _, m, err = DecodeRouter([][]byte{[]byte("api"), hb[:]}); err != nil || m.OpCode != OpReload {
		t.Fatalf("router: %+v %v", m, err)
	}
	// Encode still sends the empty payload frame.
	frames, _ := Encode(Message{OpCode: OpReload})
	if len(frames) != 2 {
		t.Fatalf("RELOAD encoded as %d frames", len(frames))
	}
}

func hdr(op OpCode, job uint64, n uint32) []byte {
	b := Header{OpCode: op, JobID: job, PayloadLen: n}.Bytes()
	return b[:]
}

func TestDecodeErrors(t *testing.T) {
	withVersion := func(v byte) []byte { b := hdr(OpDispatch, 1, 0); b[0] = v; return b }
	withOp := func(op byte) []byte { b := hdr(OpDispatch, 1, 0); b[1] = op; return b }
	cases := []struct {
		name   string
		frames [][]byte
		max    uint32
		router bool
		want   error
		check  func(t *testing.T, err error)
	}{
		{name: "no frames", frames: nil, want: ErrInvalidFrameCount, check: func(t *testing.T, err error) {
			var e *InvalidFrameCountError
			if !errors.As(err, &e) || e.Expected != 2 || e.Got != 0 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "three frames", frames: [][]byte{hdr(OpAbort, 1, 0), {}, {}}, want: ErrInvalidFrameCount},
		{name: "header only, not reload", frames: [][]byte{hdr(OpAbort, 1, 0)}, want: ErrInvalidFrameCount},
		{name: "header only reload with length", frames: [][]byte{hdr(OpReload, 0, 2)}, want: ErrInvalidFrameCount},
		{name: "router without identity", router: true, frames: [][]byte{hdr(OpAbort, 1, 0), {}}, want: ErrHeaderTooShort},
		{name: "router header only, not reload", router: true, frames: [][]byte{[]byte("id"), hdr(OpAbort, 1, 0)}, want: ErrInvalidFrameCount},
		{name: "router empty", router: true, frames: nil, want: ErrInvalidFrameCount, check: func(t *testing.T, err error) {
			var e *InvalidFrameCountError
			if !errors.As(err, &e) || e.Expected != 3 || e.Got != 0 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "router four frames", router: true, frames: [][]byte{[]byte("id"), hdr(OpAbort, 1, 0), {}, {}}, want: ErrInvalidFrameCount, check: func(t *testing.T, err error) {
			var e *InvalidFrameCountError
			if !errors.As(err, &e) || e.Expected != 3 || e.Got != 4 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "empty header", frames: [][]byte{{}, {}}, want: ErrHeaderTooShort},
		{name: "15-byte header", frames: [][]byte{hdr(OpAbort, 1, 0)[:15], {}}, want: ErrHeaderTooShort, check: func(t *testing.T, err error) {
			var e *HeaderTooShortError
			if !errors.As(err, &e) || e.Expected != 16 || e.Got != 15 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "version 3", frames: [][]byte{withVersion(3), {}}, want: ErrVersionMismatch, check: func(t *testing.T, err error) {
			var e *VersionMismatchError
			if !errors.As(err, &e) || e.Expected != 4 || e.Got != 3 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "version 5", frames: [][]byte{withVersion(5), {}}, want: ErrVersionMismatch},
		{name: "opcode 12", frames: [][]byte{withOp(12), {}}, want: ErrInvalidOpCode, check: func(t *testing.T, err error) {
			var e *InvalidOpCodeError
			if !errors.As(err, &e) || e.OpCode != 12 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "opcode 255", frames: [][]byte{withOp(255), {}}, want: ErrInvalidOpCode},
		{name: "payload shorter than header says", frames: [][]byte{hdr(OpConclude, 1, 10), []byte("{}")}, want: ErrPayloadLengthMismatch, check: func(t *testing.T, err error) {
			var e *PayloadLengthMismatchError
			if !errors.As(err, &e) || e.Expected != 10 || e.Got != 2 {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "payload longer than header says", frames: [][]byte{hdr(OpConclude, 1, 0), []byte("{}")}, want: ErrPayloadLengthMismatch},
		{name: "header length above default cap", frames: [][]byte{hdr(OpDispatch, 1, DefaultMaxPayload+1), {}}, want: ErrPayloadTooLarge, check: func(t *testing.T, err error) {
			var e *PayloadTooLargeError
			if !errors.As(err, &e) || e.Size != DefaultMaxPayload+1 || e.Max != DefaultMaxPayload {
				t.Fatalf("got %#v", err)
			}
		}},
		{name: "header length u32 max", frames: [][]byte{hdr(OpDispatch, 1, ^uint32(0)), {}}, want: ErrPayloadTooLarge},
		{name: "payload frame above custom cap", max: 4, frames: [][]byte{hdr(OpDispatch, 1, 2), []byte("12345")}, want: ErrPayloadTooLarge},
		{name: "payload at custom cap", max: 4, frames: [][]byte{hdr(OpDispatch, 1, 4), []byte("1234")}},
		{name: "opcode 0 parses", frames: [][]byte{hdr(OpUnknown, 0, 0), {}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Decoder{MaxPayload: c.max}
			var err error
			if c.router {
				_, _, err = d.DecodeRouter(c.frames)
			} else {
				_, err = d.Decode(c.frames)
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "protocol: ") || strings.ToLower(msg[:12]) != msg[:12] {
				t.Errorf("error message %q: want lowercase, prefixed with \"protocol: \"", msg)
			}
			if c.check != nil {
				c.check(t, err)
			}
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	if _, err := Encode(Message{OpCode: 12}); !errors.Is(err, ErrInvalidOpCode) {
		t.Fatalf("Encode(opcode 12) = %v", err)
	}
	if _, err := EncodeRouter([]byte("id"), Message{OpCode: 200}); !errors.Is(err, ErrInvalidOpCode) {
		t.Fatalf("EncodeRouter(opcode 200) = %v", err)
	}
	if _, err := NewMessage(OpCode(12), 0, nil); !errors.Is(err, ErrInvalidOpCode) {
		t.Fatalf("NewMessage(opcode 12) = %v", err)
	}
	// A payload of 4 GiB cannot be allocated in a test; check the length
	// rule Encode and NewMessage apply.
	if err := checkSendLen(MaxPayloadLen); err != nil {
		t.Fatalf("u32 max rejected: %v", err)
	}
	err := checkSendLen(MaxPayloadLen + 1)
	var e *PayloadTooLargeError
	if !errors.As(err, &e) || e.Size != MaxPayloadLen+1 || e.Max != MaxPayloadLen || !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("u32 max + 1: %#v", err)
	}
	if _, err := NewMessage(OpErr, 0, make(chan int)); !errors.Is(err, ErrJSON) {
		t.Fatalf("NewMessage(unencodable) = %v", err)
	}
}

func TestDecodeDoesNotCopy(t *testing.T) {
	payload := []byte(`{"message":"x"}`)
	m, err := Decode([][]byte{hdr(OpErr, 0, uint32(len(payload))), payload})
	if err != nil {
		t.Fatal(err)
	}
	if &m.Payload[0] != &payload[0] {
		t.Fatal("Decode copied the payload")
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = Decode([][]byte{hdr(OpErr, 0, uint32(len(payload))), payload}) }); n > 1 {
		t.Fatalf("Decode allocates %v times per call", n)
	}
}

// TestDecodeCapBeforeAllocation: a header announcing a huge payload is
// refused from the header alone, with no allocation beyond the error value.
func TestDecodeCapBeforeAllocation(t *testing.T) {
	frames := [][]byte{hdr(OpDeploy, 0, ^uint32(0)), []byte("{")}
	n := testing.AllocsPerRun(100, func() {
		if _, err := (Decoder{MaxPayload: 1024}).Decode(frames); !errors.Is(err, ErrPayloadTooLarge) {
			t.Fatal(err)
		}
	})
	if n > 1 {
		t.Fatalf("refusing an oversized payload allocates %v times", n)
	}
}
