package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"go.uber.org/goleak"
)

// pipeConn returns a hardened conn over one end of a net.Pipe (which has no
// buffering: a write blocks until the peer reads it), with its handshake
// marked finished, the peer end and the registry whose counters it bumps.
func pipeConn(t *testing.T, lim Limits) (*conn, net.Conn, *registry) {
	t.Helper()
	a, b := net.Pipe()
	reg := &registry{}
	c := newConn(a, reg, lim.normalized())
	c.finishHandshake()
	return c, b, reg
}

// readUntilClosed reads from c until an error and returns the bytes read;
// it fails the test if c is still open after d.
func readUntilClosed(t *testing.T, c net.Conn, d time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			if isTimeout(err) {
				t.Fatalf("peer still open after %v", d)
			}
			return got.Bytes()
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func checkLimitError(t *testing.T, err error, kind LimitKind) {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || le.Kind != kind {
		t.Fatalf("err = %v, want a LimitError of kind %s", err, kind)
	}
	var ne net.Error
	if !errors.As(err, &ne) || ne.Timeout() {
		t.Fatalf("err = %v is not a non-timeout net.Error", err)
	}
}

// TestSendOverflow: a peer that reads nothing; Writes return at once until
// MaxSendBuffer would be exceeded, then the conn is dropped and counted.
func TestSendOverflow(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c, peer, reg := pipeConn(t, Limits{MaxSendBuffer: 1000})
	defer peer.Close()

	for _, n := range []int{600, 300, 100} { // exactly 1000: still fits
		got := within(t, 2*time.Second, "write", func() (int, error) { return c.Write(make([]byte, n)) })
		if got != n {
			t.Fatalf("Write returned %d, want %d", got, n)
		}
	}
	if _, err := c.Write([]byte{1}); err == nil {
		t.Fatal("Write beyond MaxSendBuffer succeeded")
	} else {
		checkLimitError(t, err, KindSendBufferFull)
	}
	if got := reg.stats.sendOverflows.Load(); got != 1 {
		t.Fatalf("SendOverflows = %d, want 1", got)
	}
	readUntilClosed(t, peer, 2*time.Second) // dropped, not just refused
	_, err := c.Write([]byte{1})
	checkLimitError(t, err, KindSendBufferFull) // sticky
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := reg.stats.sendOverflows.Load(); got != 1 {
		t.Fatalf("SendOverflows = %d after more writes, want 1", got)
	}
}

// TestWriteTimeout: a peer that accepts no bytes for WriteTimeout is
// dropped by the writer goroutine, and later Writes fail.
func TestWriteTimeout(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const wt = 200 * time.Millisecond
	c, peer, reg := pipeConn(t, Limits{WriteTimeout: wt})
	defer peer.Close()
	start := time.Now()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	el := waitFor(t, wt+3*time.Second, "write timeout", func() bool { return reg.stats.writeTimeouts.Load() == 1 })
	if time.Since(start) < wt {
		t.Fatalf("dropped after %v, before WriteTimeout", el)
	}
	t.Logf("stalled peer dropped after %v (WriteTimeout %v)", time.Since(start), wt)
	readUntilClosed(t, peer, 2*time.Second)
	_, err := c.Write([]byte("more"))
	checkLimitError(t, err, KindWriteTimeout)
	_ = c.Close()
}

// TestWriteTimeoutProgress: a slow peer that keeps accepting bytes is not
// dropped although the whole transfer takes several WriteTimeouts.
func TestWriteTimeoutProgress(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const wt = 600 * time.Millisecond
	c, peer, reg := pipeConn(t, Limits{WriteTimeout: wt})
	defer peer.Close()
	want := make([]byte, 120)
	for i := range want {
		want[i] = byte(i)
	}
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 5)
	start := time.Now()
	for len(got) < len(want) {
		time.Sleep(wt / 4)
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ")
	}
	if el := time.Since(start); el < 3*wt {
		t.Fatalf("transfer took only %v; the test needs several WriteTimeouts", el)
	}
	if n := reg.stats.writeTimeouts.Load(); n != 0 {
		t.Fatalf("WriteTimeouts = %d for a slow but live peer", n)
	}
	_ = c.Close()
	readUntilClosed(t, peer, 2*time.Second)
}

// TestSendOrderPipe: writes of varied sizes (across block boundaries),
// issued while the writer drains, arrive byte-exact and in order.
func TestSendOrderPipe(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	c, peer, _ := pipeConn(t, Limits{})
	defer peer.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 4*sendBlockSize)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	var (
		want   bytes.Buffer
		chunks [][2]int // offset in src, length
	)
	for i := 0; i < 400; i++ {
		var n int
		switch i % 4 {
		case 0:
			n = rng.IntN(16)
		case 1:
			n = rng.IntN(300)
		case 2:
			n = sendBlockSize - 8 + rng.IntN(16)
		default:
			n = rng.IntN(3 * sendBlockSize)
		}
		off := rng.IntN(len(src) - n + 1)
		chunks = append(chunks, [2]int{off, n})
		want.Write(src[off : off+n])
	}
	got := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 100_000)
		r := rand.New(rand.NewPCG(3, 4))
		for b.Len() < want.Len() {
			n, err := peer.Read(buf[:1+r.IntN(len(buf)-1)])
			b.Write(buf[:n])
			if err != nil {
				break
			}
			if r.IntN(50) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		got <- b.Bytes()
	}()
	// The caller's buffer is reused (and scribbled on) after each Write,
	// as zmq4 may do.
	scratch := make([]byte, 3*sendBlockSize)
	for i, ch := range chunks {
		b := scratch[:ch[1]]
		copy(b, src[ch[0]:])
		if k, err := c.Write(b); err != nil || k != len(b) {
			t.Fatalf("write %d: %d, %v", i, k, err)
		}
		clear(b)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatalf("received %d bytes, want %d, or content differs", len(b), want.Len())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("reader did not finish")
	}
	waitFor(t, 2*time.Second, "queue empty", func() bool {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return c.queued == 0
	})
	_ = c.Close()
}

// TestCloseFlushes: Close returns at once; queued bytes still reach a peer
// that reads them, then the peer sees EOF. A peer that does not read is
// closed after WriteTimeout. Either way the writer goroutine exits.
func TestCloseFlushes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	t.Run("reading peer", func(t *testing.T) {
		c, peer, _ := pipeConn(t, Limits{})
		defer peer.Close()
		want := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
		if _, err := c.Write(want); err != nil {
			t.Fatal(err)
		}
		within(t, time.Second, "close", func() (struct{}, error) { return struct{}{}, c.Close() })
		if _, err := c.Write([]byte("x")); err == nil {
			t.Fatal("Write after Close succeeded")
		}
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("Read after Close: %v, want a non-timeout error", err)
		}
		if got := readUntilClosed(t, peer, 5*time.Second); !bytes.Equal(got, want) {
			t.Fatalf("peer got %d bytes, want %d", len(got), len(want))
		}
	})
	t.Run("stalled peer", func(t *testing.T) {
		const wt = time.Second
		c, peer, reg := pipeConn(t, Limits{WriteTimeout: wt})
		defer peer.Close()
		if _, err := c.Write([]byte("never read")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		within(t, time.Second, "close", func() (struct{}, error) { return struct{}{}, c.Close() })
		el := waitFor(t, wt+3*time.Second, "writer exit", func() bool {
			c.wmu.Lock()
			defer c.wmu.Unlock()
			return c.wstate == wStop
		})
		if el < wt/2 {
			t.Fatalf("gave up flushing after %v, before WriteTimeout", el)
		}
		t.Logf("stalled peer closed %v after Close", time.Since(start))
		readUntilClosed(t, peer, time.Second)
		if reg.stats.writeTimeouts.Load() != 0 {
			t.Fatal("a flush after Close was counted as a write timeout")
		}
	})
	t.Run("blocked read", func(t *testing.T) {
		// zmq4's reader goroutine sits in Read; Close must unblock it
		// even while the queue is being flushed.
		c, peer, _ := pipeConn(t, Limits{})
		defer peer.Close()
		if _, err := c.Write([]byte("pending")); err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 16))
			readErr <- err
		}()
		time.Sleep(50 * time.Millisecond)
		_ = c.Close()
		select {
		case err := <-readErr:
			if err == nil || isTimeout(err) {
				t.Fatalf("Read: %v, want a non-timeout error", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("Read still blocked after Close")
		}
		if got := readUntilClosed(t, peer, 5*time.Second); string(got) != "pending" {
			t.Fatalf("peer got %q", got)
		}
	})
}

// TestHandshakeWritesSync: before the handshake is finished, Write goes
// straight to the network (and blocks on a peer that does not read).
func TestHandshakeWritesSync(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b := net.Pipe()
	defer b.Close()
	c := newConn(a, &registry{}, Limits{HandshakeTimeout: 5 * time.Second}.normalized())
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("greeting"))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("handshake Write returned before the peer read (err=%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c.wstarted {
		t.Fatal("writer goroutine started during the handshake")
	}
}

// withLimits registers lim (plus the suite's handshake timeout) for the
// rest of the test and restores the suite's limits afterwards. Limits are
// captured when a socket listens or dials.
func withLimits(t *testing.T, lim Limits) {
	t.Helper()
	lim.HandshakeTimeout = testHandshakeTimeout
	if err := Register(lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Register(Limits{HandshakeTimeout: testHandshakeTimeout}) })
}

// newDealerID creates a DEALER with identity id, closed at cleanup.
func newDealerID(t *testing.T, id string) zmq4.Socket {
	d := zmq4.NewDealer(context.Background(), quiet, zmq4.WithDialerMaxRetries(3), zmq4.WithID(zmq4.SocketIdentity(id)))
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// TestStalledPeer: a ROUTER floods DEALER A, which does not call Recv
// (zmq4's reader for A blocks on its full channel, so A stops reading its
// TCP conn and the ROUTER's writes to A eventually block), then sends one
// message to DEALER B.
//
// Vulnerable (plain zmq4, or the async path disabled): zmq4 holds the
// ROUTER's socket-wide send lock while blocked writing to A, so the Send to
// B blocks until A reads again. Hardened: the flood's Sends return at once
// (A's bytes are queued, or A is dropped for overflowing MaxSendBuffer) and
// B is served at once.
//
// Finally A receives: every flood message in order, or (dropped) an
// in-order prefix and then an error.
func TestStalledPeer(t *testing.T) {
	const (
		floodMsgs = 400 // 100 MiB: more than loopback TCP buffers absorb
		floodSize = 256 << 10
	)
	run := func(t *testing.T, ep string, vulnerable, wantOverflow bool) {
		overflowsBefore := CurrentStats().SendOverflows
		router, dialEp := newRouter(t, ep)
		a, b := newDealerID(t, "A"), newDealerID(t, "B")
		for _, d := range []zmq4.Socket{a, b} {
			within(t, 5*time.Second, "dial", func() (struct{}, error) { return struct{}{}, d.Dial(dialEp) })
			within(t, 5*time.Second, "hello", func() (struct{}, error) {
				return struct{}{}, d.Send(zmq4.NewMsgString("hello"))
			})
		}
		for i := 0; i < 2; i++ { // the ROUTER knows both peers now
			within(t, 5*time.Second, "router recv hello", router.Recv)
		}

		payload := make([]byte, floodSize)
		var sent atomic.Int64
		floodDone := make(chan struct{})
		go func() {
			defer close(floodDone)
			for i := 0; i < floodMsgs; i++ {
				var seq [8]byte
				binary.BigEndian.PutUint64(seq[:], uint64(i))
				_ = router.Send(zmq4.NewMsgFrom([]byte("A"), seq[:], payload))
				sent.Add(1)
			}
		}()
		floodStart := time.Now()
		if vulnerable {
			// Wait until the flood made no progress for 500 ms.
			last, lastChange := int64(-1), time.Now()
			for time.Since(lastChange) < 500*time.Millisecond {
				select {
				case <-floodDone:
					t.Fatal("the flood never blocked: kernel buffers absorbed it; raise floodMsgs")
				case <-time.After(50 * time.Millisecond):
				}
				if n := sent.Load(); n != last {
					last, lastChange = n, time.Now()
				}
				if time.Since(floodStart) > 30*time.Second {
					t.Fatal("flood neither finished nor stalled within 30 s")
				}
			}
			t.Logf("flood stalled: %d/%d Sends returned", sent.Load(), floodMsgs)
		} else {
			// Every Send returns without waiting for A.
			select {
			case <-floodDone:
				t.Logf("flood: all %d Sends returned in %v", floodMsgs, time.Since(floodStart))
			case <-time.After(20 * time.Second):
				t.Fatalf("a ROUTER Send blocked on the stalled peer (%d/%d returned)", sent.Load(), floodMsgs)
			}
		}

		bStart := time.Now()
		bDone := make(chan error, 1)
		go func() {
			err := router.Send(zmq4.NewMsgFrom([]byte("B"), []byte("to-b")))
			if err == nil {
				var m zmq4.Msg
				if m, err = b.Recv(); err == nil && string(m.Bytes()) != "to-b" {
					err = fmt.Errorf("B got %q", m.Bytes())
				}
			}
			bDone <- err
		}()
		type drained struct {
			n   int
			err error
		}
		aDone := make(chan drained, 1)
		drainA := func() {
			for i := 0; i < floodMsgs; i++ {
				m, err := a.Recv()
				if err != nil {
					aDone <- drained{i, err}
					return
				}
				if len(m.Frames) != 2 || len(m.Frames[0]) != 8 || len(m.Frames[1]) != floodSize {
					aDone <- drained{i, fmt.Errorf("A msg %d: bad shape", i)}
					return
				}
				if seq := binary.BigEndian.Uint64(m.Frames[0]); seq != uint64(i) {
					aDone <- drained{i, fmt.Errorf("A msg %d has seq %d", i, seq)}
					return
				}
			}
			aDone <- drained{floodMsgs, nil}
		}
		if vulnerable {
			select {
			case err := <-bDone:
				t.Fatalf("Send to B completed in %v while A was stalled (err=%v)", time.Since(bStart), err)
			case <-time.After(1500 * time.Millisecond):
				t.Logf("Send to B still blocked after %v", time.Since(bStart))
			}
			go drainA() // A reads again: the ROUTER's write to A proceeds
			select {
			case err := <-bDone:
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("B served %v after the Send, once A read again", time.Since(bStart))
			case <-time.After(20 * time.Second):
				t.Fatal("Send to B still blocked after A read again")
			}
		} else {
			select {
			case err := <-bDone:
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("B served in %v", time.Since(bStart))
			case <-time.After(5 * time.Second):
				t.Fatal("Send to B blocked by the stalled peer A")
			}
			go drainA()
		}
		var d drained
		select {
		case d = <-aDone:
		case <-time.After(60 * time.Second):
			t.Fatal("A did not finish receiving")
		}
		select {
		case <-floodDone:
		case <-time.After(10 * time.Second):
			t.Fatal("flood goroutine still blocked")
		}
		overflows := CurrentStats().SendOverflows - overflowsBefore
		if wantOverflow {
			if overflows != 1 || d.err == nil {
				t.Fatalf("SendOverflows grew by %d, A got %d messages then %v; want A dropped for overflow", overflows, d.n, d.err)
			}
			t.Logf("A dropped for overflow after an in-order prefix of %d messages (%v)", d.n, d.err)
		} else {
			if overflows != 0 || d.err != nil {
				t.Fatalf("SendOverflows grew by %d, A got %d messages then %v", overflows, d.n, d.err)
			}
			t.Logf("A received all %d messages in order", d.n)
		}
	}

	t.Run("plain zmq4 tcp (vulnerable)", func(t *testing.T) {
		run(t, "tcp://127.0.0.1:0", true, false)
	})
	t.Run("hardened ctcp async disabled (vulnerable)", func(t *testing.T) {
		withLimits(t, Limits{MaxSendBuffer: -1})
		run(t, "ctcp://127.0.0.1:0", true, false)
	})
	t.Run("hardened ctcp 16MiB buffer (A dropped)", func(t *testing.T) {
		withLimits(t, Limits{MaxSendBuffer: 16 << 20})
		run(t, "ctcp://127.0.0.1:0", false, true)
	})
	t.Run("hardened ctcp 128MiB buffer (A queued)", func(t *testing.T) {
		withLimits(t, Limits{MaxSendBuffer: 128 << 20})
		run(t, "ctcp://127.0.0.1:0", false, false)
	})
}

// TestSendOrderZMQ: a ROUTER and a DEALER exchange many multipart messages
// of varied sizes in both directions at once; all arrive intact and in
// order.
func TestSendOrderZMQ(t *testing.T) {
	sizes := []int{0, 1, 2, 255, 256, 257, 1000, sendBlockSize - 9, sendBlockSize - 1, sendBlockSize,
		sendBlockSize + 1, 3*sendBlockSize + 5, 300_000, 1 << 20}
	const n = 150
	body := func(seq, size int) []byte {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(seq*7 + i*13)
		}
		return b
	}
	msg := func(seq int) [][]byte {
		var s [8]byte
		binary.BigEndian.PutUint64(s[:], uint64(seq))
		return [][]byte{s[:], body(seq, sizes[seq%len(sizes)]), body(seq+1, sizes[(seq*5+3)%len(sizes)])}
	}
	check := func(who string, seq int, frames [][]byte) error {
		want := msg(seq)
		if len(frames) != len(want) {
			return fmt.Errorf("%s msg %d: %d frames, want %d", who, seq, len(frames), len(want))
		}
		for i := range want {
			if !bytes.Equal(frames[i], want[i]) {
				return fmt.Errorf("%s msg %d frame %d differs (len %d, want %d)", who, seq, i, len(frames[i]), len(want[i]))
			}
		}
		return nil
	}

	router, ep := newRouter(t, "ctcp://127.0.0.1:0")
	dealer := newDealerID(t, "D")
	within(t, 5*time.Second, "dial", func() (struct{}, error) { return struct{}{}, dealer.Dial(ep) })
	within(t, 5*time.Second, "hello", func() (struct{}, error) { return struct{}{}, dealer.Send(zmq4.NewMsgString("hello")) })
	within(t, 5*time.Second, "router recv hello", router.Recv)

	errs := make(chan error, 4)
	go func() { // router -> dealer
		for i := 0; i < n; i++ {
			if err := router.Send(zmq4.NewMsgFrom(append([][]byte{[]byte("D")}, msg(i)...)...)); err != nil {
				errs <- fmt.Errorf("router send %d: %w", i, err)
				return
			}
		}
		errs <- nil
	}()
	go func() { // dealer -> router, multipart via SendMulti (net.Buffers in zmq4)
		for i := 0; i < n; i++ {
			if err := dealer.SendMulti(zmq4.NewMsgFrom(msg(i)...)); err != nil {
				errs <- fmt.Errorf("dealer send %d: %w", i, err)
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for i := 0; i < n; i++ {
			m, err := dealer.Recv()
			if err != nil {
				errs <- err
				return
			}
			if err := check("dealer", i, m.Frames); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for i := 0; i < n; i++ {
			m, err := router.Recv()
			if err != nil {
				errs <- err
				return
			}
			if string(m.Frames[0]) != "D" {
				errs <- fmt.Errorf("router msg %d from %q", i, m.Frames[0])
				return
			}
			if err := check("router", i, m.Frames[1:]); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for i := 0; i < 4; i++ {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("exchange did not finish")
		}
	}
}
