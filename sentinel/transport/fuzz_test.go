package transport

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// plainHello is a valid peer opening for the PLAIN listener: its greeting
// and a HELLO command with user u and password pw.
func plainHello(user, pw string) []byte {
	b := append([]byte(nil), plainGreeting...)
	body := append([]byte{5}, "HELLO"...)
	body = append(body, byte(len(user)))
	body = append(body, user...)
	body = append(body, byte(len(pw)))
	body = append(body, pw...)
	b = append(b, flagCommand, byte(len(body)))
	return append(b, body...)
}

// FuzzHandshake feeds any bytes as a peer's opening to the listener side of
// the handshake (greeting, first command, PLAIN HELLO check) over an
// in-memory connection: it must end with an error or a verified HELLO,
// never panic, never read more than the handshake cap, and accept only the
// right password.
func FuzzHandshake(f *testing.F) {
	const secret = "0123456789abcdef"
	f.Add(plainHello("worker", secret), true)
	f.Add(plainHello("worker", "wrong password!!"), true)
	f.Add(plainHello("", ""), true)
	f.Add(append(append([]byte(nil), nullGreeting...), flagCommand, 0), false)
	long := append(append([]byte(nil), plainGreeting...), flagCommand|flagLong, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff)
	f.Add(long, true)
	f.Add([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3}, false)
	f.Fuzz(func(t *testing.T, peer []byte, plain bool) {
		greeting, password := nullGreeting, []byte(nil)
		if plain {
			greeting, password = plainGreeting, []byte(secret)
		}
		server, client := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Take the listener's greeting, send the peer's bytes,
			// swallow whatever comes back (an ERROR command).
			if _, err := io.ReadFull(client, make([]byte, greetingLen)); err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, client) }()
			_, _ = client.Write(peer)
			_ = client.Close()
		}()
		_ = server.SetDeadline(time.Now().Add(5 * time.Second))
		lim := Limits{MaxFrameSize: 1 << 20, MaxMessageSize: 1 << 20}
		pre, err := preHandshake(server, lim, greeting)
		if err == nil {
			if len(pre) > greetingLen+9+maxHandshakeFrame {
				t.Fatalf("pre-handshake read %d bytes, cap %d", len(pre), greetingLen+9+maxHandshakeFrame)
			}
			if plain {
				err = checkPlain(server, pre, password)
				if err == nil && !validHello(pre[greetingLen:], secret) {
					t.Fatalf("accepted a HELLO without the secret: %q", pre[greetingLen:])
				}
				if err != nil && !errors.Is(err, ErrAuthFailed) {
					t.Fatalf("PLAIN check failed with %v, want ErrAuthFailed", err)
				}
			}
		}
		_ = server.Close()
		<-done
	})
}

// validHello reports whether frame (flags, size, body) is exactly a HELLO
// command carrying password pw.
func validHello(frame []byte, pw string) bool {
	if len(frame) < 2 {
		return false
	}
	body := frame[2:]
	if frame[0]&flagLong != 0 {
		if len(frame) < 9 {
			return false
		}
		body = frame[9:]
	}
	_, pass, err := parseHello(body)
	return err == nil && string(pass) == pw
}

// FuzzFrameParser feeds any bytes, cut into chunks at fuzzed points, to the
// streaming ZMTP parser that guards every connection: it returns nil or a
// *LimitError, the same whatever the chunking, and never lets a frame or a
// message past its cap.
func FuzzFrameParser(f *testing.F) {
	f.Add(plainHello("u", "p"), uint8(1))
	f.Add(append(append([]byte(nil), nullGreeting...), 0, 3, 'a', 'b', 'c', flagMore, 1, 'x', 0, 0), uint8(7))
	f.Add(append(append([]byte(nil), nullGreeting...), flagLong, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		const maxFrame, maxMsg = 256, 1024
		whole := newFrameParser(maxFrame, maxMsg)
		errWhole := whole.feed(b)
		chunked := newFrameParser(maxFrame, maxMsg)
		var errChunked error
		n := int(step%64) + 1
		for rest := b; len(rest) > 0 && errChunked == nil; {
			k := min(n, len(rest))
			errChunked = chunked.feed(rest[:k])
			rest = rest[k:]
		}
		for _, err := range []error{errWhole, errChunked} {
			var le *LimitError
			if err != nil && !errors.As(err, &le) {
				t.Fatalf("feed returned %T %v, want a *LimitError", err, err)
			}
		}
		if (errWhole == nil) != (errChunked == nil) {
			t.Fatalf("whole: %v; in chunks of %d: %v", errWhole, n, errChunked)
		}
		if errWhole != nil {
			return
		}
		for _, p := range []*frameParser{whole, chunked} {
			if p.body > maxFrame || p.msgTotal > maxMsg {
				t.Fatalf("parser let through a frame body of %d (cap %d), a message of %d (cap %d)", p.body, maxFrame, p.msgTotal, maxMsg)
			}
		}
		if whole.state != chunked.state || whole.body != chunked.body || whole.msgTotal != chunked.msgTotal ||
			whole.handshakeDone != chunked.handshakeDone {
			t.Fatalf("state differs with chunking: whole %+v, chunked %+v", *whole, *chunked)
		}
	})
}
