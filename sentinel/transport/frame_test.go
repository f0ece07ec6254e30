package transport

import (
	"encoding/binary"
	"errors"
	"testing"
)

func shortFrame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		panic("short frame too long")
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

func longHeader(flags byte, size uint64) []byte {
	h := make([]byte, 9)
	h[0] = flags | flagLong
	binary.BigEndian.PutUint64(h[1:], size)
	return h
}

func readyCmd() []byte { return readyCmdType("DEALER") }

func readyCmdType(typ string) []byte {
	body := []byte{5}
	body = append(body, "READY"...)
	body = append(body, 11)
	body = append(body, "Socket-Type"...)
	body = append(body, 0, 0, 0, byte(len(typ)))
	body = append(body, typ...)
	return shortFrame(flagCommand, body)
}

func TestOwnSocketType(t *testing.T) {
	w := append(append([]byte(nil), nullGreeting...), readyCmdType("ROUTER")...)
	if typ, ok := ownSocketType(w); !ok || typ != "ROUTER" {
		t.Fatalf("got %q %v", typ, ok)
	}
	for _, bad := range [][]byte{nil, w[:greetingLen+3], nullGreeting} {
		if _, ok := ownSocketType(bad); ok {
			t.Fatalf("parsed %x", bad)
		}
	}
}

// feedChunks feeds stream to a new parser in chunks of size chunk (0 = all
// at once) and returns the first error and the offset where it occurred.
func feedChunks(p *frameParser, stream []byte, chunk int) (int, error) {
	if chunk <= 0 {
		chunk = len(stream)
	}
	for off := 0; off < len(stream); off += chunk {
		end := min(off+chunk, len(stream))
		if err := p.feed(stream[off:end]); err != nil {
			return end, err
		}
	}
	return len(stream), nil
}

func TestParserValidStream(t *testing.T) {
	var stream []byte
	stream = append(stream, nullGreeting...)
	stream = append(stream, readyCmd()...)
	stream = append(stream, shortFrame(flagMore, []byte("id"))...)
	stream = append(stream, shortFrame(flagMore, nil)...)
	big := make([]byte, 1000)
	stream = append(stream, longHeader(0, uint64(len(big)))...)
	stream = append(stream, big...)
	for _, chunk := range []int{0, 1, 2, 3, 7, 64, 65, 100} {
		p := newFrameParser(DefaultMaxFrameSize, DefaultMaxMessageSize)
		if _, err := feedChunks(p, stream, chunk); err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		if !p.handshakeDone {
			t.Fatalf("chunk %d: READY not recognised", chunk)
		}
		if p.state != stFlags || p.msgTotal != 0 {
			t.Fatalf("chunk %d: parser not at frame boundary: state=%d msgTotal=%d", chunk, p.state, p.msgTotal)
		}
	}
}

func TestParserHandshakeNeedsCompleteReady(t *testing.T) {
	stream := append(append([]byte(nil), nullGreeting...), readyCmd()...)
	p := newFrameParser(DefaultMaxFrameSize, DefaultMaxMessageSize)
	if err := p.feed(stream[:len(stream)-1]); err != nil {
		t.Fatal(err)
	}
	if p.handshakeDone {
		t.Fatal("handshake marked done before the READY body was complete")
	}
	if err := p.feed(stream[len(stream)-1:]); err != nil {
		t.Fatal(err)
	}
	if !p.handshakeDone {
		t.Fatal("handshake not done after READY")
	}
}

// A 4 GiB announcement is rejected as soon as the 8th size byte arrives,
// whatever the chunking: no body byte is needed.
func TestParserRejectsOversizedFrameHeader(t *testing.T) {
	var stream []byte
	stream = append(stream, nullGreeting...)
	stream = append(stream, readyCmd()...)
	hdrEnd := len(stream) + 9
	stream = append(stream, longHeader(0, 4<<30)...)
	for _, chunk := range []int{0, 1, 5, 9} {
		p := newFrameParser(DefaultMaxFrameSize, DefaultMaxMessageSize)
		off, err := feedChunks(p, stream, chunk)
		var le *LimitError
		if !errors.As(err, &le) || le.Kind != KindFrameTooLarge {
			t.Fatalf("chunk %d: err = %v, want frame-too-large", chunk, err)
		}
		if chunk == 1 && off != hdrEnd {
			t.Fatalf("rejected at byte %d, want %d", off, hdrEnd)
		}
	}
	// Exactly at the cap is fine; cap+1 is not (also for command frames).
	for _, tc := range []struct {
		flags byte
		size  uint64
		ok    bool
	}{
		{0, DefaultMaxFrameSize, true},
		{0, DefaultMaxFrameSize + 1, false},
		{flagCommand, DefaultMaxFrameSize + 1, false},
		{0, ^uint64(0), false},
	} {
		p := newFrameParser(DefaultMaxFrameSize, DefaultMaxMessageSize)
		err := p.feed(append(append([]byte(nil), nullGreeting...), longHeader(tc.flags, tc.size)...))
		if (err == nil) != tc.ok {
			t.Fatalf("flags %#x size %d: err = %v, want ok=%v", tc.flags, tc.size, err, tc.ok)
		}
	}
}

func TestParserRejectsOversizedMessage(t *testing.T) {
	p := newFrameParser(100, 250)
	stream := append([]byte(nil), nullGreeting...)
	frame := shortFrame(flagMore, make([]byte, 100))
	stream = append(stream, frame...) // 100
	stream = append(stream, frame...) // 200
	if err := p.feed(stream); err != nil {
		t.Fatal(err)
	}
	err := p.feed(shortFrame(0, make([]byte, 51))) // 251 > 250
	var le *LimitError
	if !errors.As(err, &le) || le.Kind != KindMessageTooLarge {
		t.Fatalf("err = %v, want message-too-large", err)
	}

	// The total resets at the end of a message.
	p = newFrameParser(100, 250)
	stream = append([]byte(nil), nullGreeting...)
	for i := 0; i < 10; i++ {
		stream = append(stream, shortFrame(flagMore, make([]byte, 100))...)
		stream = append(stream, shortFrame(0, make([]byte, 100))...)
	}
	if err := p.feed(stream); err != nil {
		t.Fatal(err)
	}
}

func TestParserRejectsBadGreeting(t *testing.T) {
	for _, pos := range []int{0, 9} {
		g := append([]byte(nil), nullGreeting...)
		g[pos] ^= 0x55
		err := newFrameParser(10, 10).feed(g)
		var le *LimitError
		if !errors.As(err, &le) || le.Kind != KindBadGreeting {
			t.Fatalf("pos %d: err = %v", pos, err)
		}
	}
	g := append([]byte(nil), nullGreeting...)
	g[10] = 2 // ZMTP 2.0
	if err := newFrameParser(10, 10).feed(g); err == nil {
		t.Fatal("ZMTP 2 greeting accepted")
	}
	// HTTP instead of ZMTP is rejected on the first byte.
	if err := newFrameParser(10, 10).feed([]byte("GET / HTTP/1.1\r\n")); err == nil {
		t.Fatal("HTTP accepted")
	}
}

func TestEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:5555":  "ctcp://127.0.0.1:5555",
		"ipc:///tmp/x.sock":     "cipc:///tmp/x.sock",
		"ctcp://127.0.0.1:5555": "ctcp://127.0.0.1:5555",
		"cipc:///tmp/x.sock":    "cipc:///tmp/x.sock",
	} {
		got, err := Endpoint(in)
		if err != nil || got != want {
			t.Errorf("Endpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"inproc://x", "udp://1.2.3.4:5", "127.0.0.1:5555"} {
		if _, err := Endpoint(in); err == nil {
			t.Errorf("Endpoint(%q) accepted", in)
		}
	}
}
