package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// nullGreeting is byte-for-byte the greeting zmq4 v0.17.0 writes for a
// socket with NULL security: signature FF 00x8 7F, version 3.0, mechanism
// "NULL" zero-padded to 20 bytes, as-server 0, 31 bytes of filler.
var nullGreeting = func() []byte {
	var g [greetingLen]byte
	g[0] = 0xFF
	g[9] = 0x7F
	g[10] = 3
	g[11] = 0
	copy(g[12:32], "NULL")
	return g[:]
}()

// maxHandshakeFrame bounds the first command frame pre-read by the listener
// (a NULL READY carries only Socket-Type and Identity, well under 1 KiB).
const maxHandshakeFrame = 64 << 10

var errSwallowMismatch = newLimitError(KindBadHandshake,
	"zmq4 greeting differs from the pre-sent greeting (the socket's security must match the listener's: NULL, or PLAIN when a password is set)")

// conn wraps a net.Conn: handshake deadline, frame/message caps on the read
// side and, for listener conns, replay of the pre-read handshake.
type conn struct {
	net.Conn
	reg *registry

	// Read side; only used by the goroutine that currently reads (zmq4
	// reads sequentially: first in Open, then in its per-conn reader).
	pre    []byte // pre-read bytes to hand to zmq4 before reading the net
	parser *frameParser
	rerr   error // sticky violation

	// awaitRead: the peer's READY was consumed and the local socket type has
	// a reader goroutine; the handshake counts as finished at the next Read,
	// which only happens if zmq4's Open succeeded (a failed Open abandons
	// the conn without closing it, and the timer must then close it).
	awaitRead bool

	// Write side, guarded by wmu.
	wmu     sync.Mutex
	swallow []byte // bytes zmq4 will write that were already sent
	wlog    []byte // bytes zmq4 wrote during the handshake (bounded)

	// Asynchronous send path (sendq.go), used once done is set if async.
	async    bool
	maxSend  int64
	wtimeout time.Duration
	blocks   []*sendBlock // queued, FIFO; tail is the last one or nil
	tail     *sendBlock   // block that Writes may still append to
	queued   int64        // bytes queued plus bytes in the writer's batch
	werr     error        // sticky error returned by later Writes
	wstarted bool         // writer goroutine started
	wstate   int          // wRunning, wDrain, wStop
	wcond    sync.Cond    // signals the writer; L is &wmu
	drainBy  atomic.Int64 // UnixNano deadline of the flush after Close

	done   atomic.Bool // handshake finished; set under wmu
	timer  *time.Timer
	closed atomic.Bool // Close or a drop started; no more Writes
}

func newConn(c net.Conn, reg *registry, lim Limits) *conn {
	hc := &conn{
		Conn:     c,
		reg:      reg,
		parser:   newFrameParser(lim.MaxFrameSize, lim.MaxMessageSize),
		async:    lim.MaxSendBuffer >= 0,
		maxSend:  lim.MaxSendBuffer,
		wtimeout: lim.WriteTimeout,
	}
	hc.wcond.L = &hc.wmu
	_ = c.SetDeadline(time.Now().Add(lim.HandshakeTimeout))
	hc.timer = time.AfterFunc(lim.HandshakeTimeout, func() {
		// Must not touch hc.timer here: it may not be assigned yet.
		if !hc.done.Load() && hc.closed.CompareAndSwap(false, true) {
			reg.stats.handshakeTimeouts.Add(1)
			_ = hc.Conn.Close()
			hc.stopWriter() // in case the handshake finished meanwhile
		}
	})
	return hc
}

// closeRaw closes the underlying conn once.
func (c *conn) closeRaw() { c.closeCounting(nil) }

// closeCounting closes the underlying conn at once (dropping queued sends)
// and, if this call closed it, increments counter (so each dropped conn is
// counted once).
func (c *conn) closeCounting(counter *atomic.Uint64) {
	if c.closed.CompareAndSwap(false, true) {
		if counter != nil {
			counter.Add(1)
		}
		c.timer.Stop()
		_ = c.Conn.Close()
		c.stopWriter()
	}
}

// Close closes the connection. Bytes still queued on the asynchronous send
// path are flushed first, in the background, for at most WriteTimeout (as
// if zmq4 had written them synchronously before closing); reads fail at
// once.
func (c *conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.timer.Stop()
	c.wmu.Lock()
	if c.wstarted && c.wstate == wRunning && c.queued > 0 && c.werr == nil {
		c.drainBy.Store(time.Now().Add(c.wtimeout).UnixNano())
		c.wstate = wDrain
		c.wcond.Signal()
		c.wmu.Unlock()
		_ = c.Conn.SetReadDeadline(aLongTimeAgo) // unblock zmq4's reader
		return nil
	}
	c.wmu.Unlock()
	err := c.Conn.Close()
	c.stopWriter()
	return err
}

// finishHandshake clears the handshake deadline and switches Writes to the
// asynchronous path. It holds wmu so that no Write goes async (and no
// writer arms a write deadline) before the deadline is cleared.
func (c *conn) finishHandshake() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.done.Load() {
		c.timer.Stop()
		_ = c.Conn.SetDeadline(time.Time{})
		c.done.Store(true)
	}
}

func (c *conn) violation(err *LimitError) {
	switch err.Kind {
	case KindFrameTooLarge:
		c.closeCounting(&c.reg.stats.oversizedFrames)
	case KindMessageTooLarge:
		c.closeCounting(&c.reg.stats.oversizedMessages)
	default:
		c.closeCounting(&c.reg.stats.handshakeFailures)
	}
}

// Read reads from the pre-read buffer, then from the network, and checks
// every delivered byte against the ZMTP frame limits before zmq4 sees it.
func (c *conn) Read(b []byte) (int, error) {
	if c.rerr != nil {
		return 0, c.rerr
	}
	var (
		n   int
		err error
	)
	if c.awaitRead {
		c.awaitRead = false
		c.finishHandshake()
	}
	if c.closed.Load() && c.done.Load() {
		return 0, c.closedErr("read")
	}
	if len(c.pre) > 0 {
		n = copy(b, c.pre)
		c.pre = c.pre[n:]
		if len(c.pre) == 0 {
			c.pre = nil
		}
	} else {
		n, err = c.Conn.Read(b)
	}
	if n > 0 {
		if perr := c.parser.feed(b[:n]); perr != nil {
			var le *LimitError
			if errors.As(perr, &le) {
				c.violation(le)
			}
			c.rerr = perr
			return 0, perr
		}
		if !c.done.Load() && c.parser.handshakeDone {
			c.wmu.Lock()
			typ, ok := ownSocketType(c.wlog)
			c.wlog = nil
			c.wmu.Unlock()
			if ok && typ != "PUSH" {
				c.awaitRead = true
			} else {
				// PUSH sockets never read; unknown: do not risk
				// killing a healthy conn.
				c.finishHandshake()
			}
		}
	}
	if err != nil {
		if !c.done.Load() {
			// zmq4 does not close the net.Conn when Open fails.
			c.closeRaw()
		} else if c.closed.Load() {
			// Unblocked by Close while the send queue is flushed: report
			// a permanent error, not the deadline.
			err = c.closedErr("read")
		}
	}
	return n, err
}

// Write writes b. During the handshake it writes synchronously, first
// discarding the bytes the listener already sent on zmq4's behalf (its
// greeting). Afterwards (unless MaxSendBuffer < 0) it queues b for the
// conn's writer goroutine and returns at once; see sendq.go.
func (c *conn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	if c.async && c.done.Load() && len(c.swallow) == 0 {
		return c.enqueue(b) // unlocks wmu
	}
	if !c.done.Load() && len(c.wlog) < maxWriteLog {
		c.wlog = append(c.wlog, b[:min(len(b), maxWriteLog-len(c.wlog))]...)
	}
	if len(c.swallow) > 0 {
		k := min(len(c.swallow), len(b))
		if !bytes.Equal(c.swallow[:k], b[:k]) {
			c.wmu.Unlock()
			c.closeCounting(&c.reg.stats.handshakeFailures)
			return 0, errSwallowMismatch
		}
		c.swallow = c.swallow[k:]
		if len(c.swallow) == 0 {
			c.swallow = nil
		}
		if k == len(b) {
			c.wmu.Unlock()
			return k, nil
		}
		c.wmu.Unlock()
		n, err := c.Conn.Write(b[k:])
		return k + n, err
	}
	c.wmu.Unlock()
	n, err := c.Conn.Write(b)
	if err != nil && !c.done.Load() {
		c.closeRaw()
	}
	return n, err
}

// maxWriteLog bounds the outgoing handshake bytes kept to learn the local
// socket type (greeting + READY with Socket-Type and a 255-byte Identity).
const maxWriteLog = 1024

// ownSocketType extracts Socket-Type from the READY command zmq4 wrote
// after its greeting.
func ownSocketType(w []byte) (string, bool) {
	if len(w) < greetingLen+2 {
		return "", false
	}
	w = w[greetingLen:]
	flags := w[0]
	if flags&flagCommand == 0 {
		return "", false
	}
	var size uint64
	if flags&flagLong != 0 {
		if len(w) < 9 {
			return "", false
		}
		size, w = binary.BigEndian.Uint64(w[1:9]), w[9:]
	} else {
		size, w = uint64(w[1]), w[2:]
	}
	if size > uint64(len(w)) {
		return "", false
	}
	body := w[:size]
	if len(body) < 1+len("READY") || int(body[0]) != len("READY") || string(body[1:6]) != "READY" {
		return "", false
	}
	props := body[6:]
	for len(props) > 0 {
		kl := int(props[0])
		if len(props) < 1+kl+4 {
			return "", false
		}
		key := string(props[1 : 1+kl])
		vl := binary.BigEndian.Uint32(props[1+kl : 1+kl+4])
		props = props[1+kl+4:]
		if uint64(vl) > uint64(len(props)) {
			return "", false
		}
		if strings.EqualFold(key, "Socket-Type") {
			return string(props[:vl]), true
		}
		props = props[vl:]
	}
	return "", false
}

// preHandshake runs on the listener side, outside zmq4's accept loop: it
// sends the greeting (NULL, or PLAIN when a password is required) and reads the peer's greeting and first command
// frame, all under the handshake deadline already armed on c.
func preHandshake(c net.Conn, lim Limits, greeting []byte) ([]byte, error) {
	if _, err := c.Write(greeting); err != nil {
		return nil, err
	}
	buf := make([]byte, greetingLen+9, greetingLen+9+64)
	if _, err := io.ReadFull(c, buf[:greetingLen]); err != nil {
		return nil, err
	}
	// Validate the greeting early (the conn parser checks it again).
	if err := newFrameParser(0, 0).feed(buf[:greetingLen]); err != nil {
		return nil, err
	}
	if !bytes.Equal(buf[12:32], greeting[12:32]) {
		mech := strings.TrimRight(string(buf[12:32]), "\x00")
		want := strings.TrimRight(string(greeting[12:32]), "\x00")
		if want == "PLAIN" {
			return nil, fmt.Errorf("%w: peer offered security mechanism %q, the sentinel requires PLAIN (a shared secret)", ErrAuthFailed, mech)
		}
		return nil, newLimitError(KindBadHandshake, "peer offered security mechanism %q, this listener speaks %s", mech, want)
	}
	hdr := buf[greetingLen : greetingLen+2]
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	flags := hdr[0]
	if flags&flagCommand == 0 {
		return nil, newLimitError(KindBadHandshake, "first frame is not a command (flags %#x)", flags)
	}
	size := uint64(hdr[1])
	end := greetingLen + 2
	if flags&flagLong != 0 {
		if _, err := io.ReadFull(c, buf[greetingLen+2:greetingLen+9]); err != nil {
			return nil, err
		}
		size = binary.BigEndian.Uint64(buf[greetingLen+1 : greetingLen+9])
		end = greetingLen + 9
	}
	capSize := min(uint64(maxHandshakeFrame), lim.MaxFrameSize)
	if size > capSize {
		return nil, newLimitError(KindFrameTooLarge, "handshake command of %d bytes exceeds limit %d", size, capSize)
	}
	buf = buf[:end]
	buf = append(buf, make([]byte, size)...)
	if _, err := io.ReadFull(c, buf[end:]); err != nil {
		return nil, err
	}
	return buf, nil
}
