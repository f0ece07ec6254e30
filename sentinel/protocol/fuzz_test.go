package protocol

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzLimits keeps the payload cap small, so any input the decoder accepts
// above it is a bug the fuzzer can reach cheaply.
var fuzzLimits = Decoder{MaxPayload: 4096}

var decodeErrors = []error{ErrInvalidOpCode, ErrHeaderTooShort, ErrVersionMismatch, ErrInvalidFrameCount,
	ErrPayloadLengthMismatch, ErrPayloadTooLarge}

func addGoldenSeeds(f *testing.F, add func(frames [][]byte)) {
	for _, g := range goldenMessages {
		add(readGolden(f, g.file))
	}
	add(readGolden(f, "header_example.hex"))
}

// FuzzDecode feeds arbitrary frames to Decode and DecodeRouter: they must
// return one of the protocol errors or a message within the cap that
// re-encodes to the same bytes, never panic, never copy the payload.
func FuzzDecode(f *testing.F) {
	addGoldenSeeds(f, func(frames [][]byte) {
		switch len(frames) {
		case 1:
			f.Add(frames[0], []byte{}, uint8(0))
		case 2:
			f.Add(frames[0], frames[1], uint8(1))
			f.Add(frames[0], frames[1], uint8(2))
		}
	})
	f.Add([]byte{4, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{}, uint8(0))
	f.Add([]byte{4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}, []byte("{}"), uint8(1))
	f.Add([]byte{3, 2}, []byte{}, uint8(3))
	f.Fuzz(func(t *testing.T, hdr, payload []byte, shape uint8) {
		var frames [][]byte
		router := false
		switch shape % 5 {
		case 0:
			frames = [][]byte{hdr}
		case 1:
			frames = [][]byte{hdr, payload}
		case 2:
			frames = [][]byte{[]byte("w-1"), hdr, payload}
			router = true
		case 3:
			frames = [][]byte{hdr, payload, payload}
		case 4:
			frames = nil
		}
		var m Message
		var err error
		if router {
			var id []byte
			id, m, err = fuzzLimits.DecodeRouter(frames)
			if err == nil && string(id) != "w-1" {
				t.Fatalf("identity %q", id)
			}
		} else {
			m, err = fuzzLimits.Decode(frames)
		}
		if err != nil {
			for _, e := range decodeErrors {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("unexpected error kind: %v", err)
		}
		if len(m.Payload) > int(fuzzLimits.MaxPayload) {
			t.Fatalf("accepted a payload of %d bytes above the cap %d", len(m.Payload), fuzzLimits.MaxPayload)
		}
		if len(m.Payload) > 0 && &m.Payload[0] != &payload[0] {
			t.Fatal("Decode copied the payload")
		}
		out, err := Encode(m)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		want := append([]byte(nil), hdr[:HeaderSize]...)
		want[2], want[3] = 0, 0 // reserved
		if !bytes.Equal(out[0], want) || !bytes.Equal(out[1], m.Payload) {
			t.Fatalf("re-encoded as %x, received %x", out, frames)
		}
		if v := NewPayload(m.OpCode); v != nil {
			_ = m.Unmarshal(v) // only ever on a payload within the cap
		}
	})
}

// FuzzUnmarshal feeds arbitrary JSON to each payload type: it must not
// panic, errors must be *JSONError, and an accepted payload must re-encode
// to a fixed point (Marshal ∘ Unmarshal ∘ Marshal = Marshal).
func FuzzUnmarshal(f *testing.F) {
	addGoldenSeeds(f, func(frames [][]byte) {
		if len(frames) == 2 {
			f.Add(frames[0][1], frames[1])
		}
	})
	f.Add(uint8(OpConclude), []byte(`{"status": "SUCCESS", "metrics": null, "artifacts": null, "error_message": null}`))
	f.Add(uint8(OpDispatch), []byte(`{"sinks":[{"topic":"t","uri":"u","mode":null}],"attempt":2}`))
	f.Add(uint8(OpHeartbeat), []byte(`{"status":"IDLE","current_job_id":null,"active_job_ids":[1,2]}`))
	f.Fuzz(func(t *testing.T, op uint8, data []byte) {
		if len(data) > int(fuzzLimits.MaxPayload) {
			return // Decode never hands a longer payload to Unmarshal
		}
		v := NewPayload(OpCode(op % 12))
		if v == nil {
			v = NewPayload(OpDeploy)
		}
		if err := Unmarshal(data, v); err != nil {
			if !errors.Is(err, ErrJSON) {
				t.Fatalf("error is not ErrJSON: %v", err)
			}
			return
		}
		b1, err := Marshal(v)
		if err != nil {
			t.Fatalf("marshal accepted payload: %v", err)
		}
		v2 := NewPayload(OpCode(op % 12))
		if v2 == nil {
			v2 = NewPayload(OpDeploy)
		}
		if err := Unmarshal(b1, v2); err != nil {
			t.Fatalf("re-decode %s: %v", b1, err)
		}
		b2, err := Marshal(v2)
		if err != nil || !bytes.Equal(b1, b2) {
			t.Fatalf("not a fixed point:\n%s\n%s (%v)", b1, b2, err)
		}
	})
}
