package transport

import (
	"errors"
	"net"
	"sync"
	"time"
)

// The asynchronous send path.
//
// zmq4 writes to a peer while holding a socket-wide lock (ROUTER: the
// routerMWriter mutex; DEALER/PUSH/PUB: the mwriter mutex), so one peer that
// stops reading blocks every Send of the socket once its TCP buffers are
// full. After the handshake a hardened conn therefore copies each Write into
// a per-conn FIFO of pooled blocks and returns at once; a writer goroutine
// drains the FIFO to the network with a deadline on every write. The FIFO is
// bounded by Limits.MaxSendBuffer: a Write that would exceed it drops the
// peer instead of blocking.

const (
	// sendBlockSize is the unit of the send queue. Writes are copied into
	// the tail block (and further blocks as needed), so small frames are
	// coalesced and large ones are split; either way every byte is copied
	// exactly once, into pooled memory.
	sendBlockSize = 64 << 10
	// sendBatchBlocks bounds the blocks handed to one writev (1 MiB); the
	// queued-bytes count drops and blocks return to the pool per batch.
	sendBatchBlocks = 16
)

type sendBlock struct {
	n int
	b [sendBlockSize]byte
}

var sendBlockPool = sync.Pool{New: func() any { return new(sendBlock) }}

func putSendBlock(b *sendBlock) {
	b.n = 0
	sendBlockPool.Put(b)
}

// Writer states (conn.wstate, guarded by conn.wmu).
const (
	wRunning = iota // draining the queue, waiting for Writes
	wDrain          // Close was called with bytes queued: flush, then close
	wStop           // conn closed: exit, drop the queue
)

// aLongTimeAgo is a deadline in the past, used to unblock a Read.
var aLongTimeAgo = time.Unix(1, 0)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// closedErr is the error of a Read or Write after Close (a non-timeout
// net.Error, like the one of a closed net.Conn).
func (c *conn) closedErr(op string) error {
	e := &net.OpError{Op: op, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed}
	if e.Source != nil {
		e.Net = e.Source.Network()
	}
	return e
}

// enqueue copies b into the send queue and wakes the writer. It is called
// with c.wmu held and releases it.
func (c *conn) enqueue(b []byte) (int, error) {
	if err := c.werr; err != nil {
		c.wmu.Unlock()
		return 0, err
	}
	if c.closed.Load() {
		c.wmu.Unlock()
		return 0, c.closedErr("write")
	}
	if len(b) == 0 {
		c.wmu.Unlock()
		return 0, nil
	}
	if c.queued+int64(len(b)) > c.maxSend {
		le := newLimitError(KindSendBufferFull,
			"%d bytes queued for a peer that is not reading, %d more would exceed limit %d",
			c.queued, len(b), c.maxSend)
		c.werr = le
		c.wmu.Unlock()
		c.closeCounting(&c.reg.stats.sendOverflows)
		return 0, le
	}
	n := len(b)
	for len(b) > 0 {
		if c.tail == nil || c.tail.n == sendBlockSize {
			c.tail = sendBlockPool.Get().(*sendBlock)
			c.blocks = append(c.blocks, c.tail)
		}
		k := copy(c.tail.b[c.tail.n:], b)
		c.tail.n += k
		b = b[k:]
	}
	c.queued += int64(n)
	if !c.wstarted {
		c.wstarted = true
		c.wcond.L = &c.wmu
		go c.writeLoop()
	} else {
		c.wcond.Signal()
	}
	c.wmu.Unlock()
	return n, nil
}

// releaseQueueLocked returns the queued (not in-flight) blocks to the pool.
func (c *conn) releaseQueueLocked() {
	for i, b := range c.blocks {
		putSendBlock(b)
		c.blocks[i] = nil
	}
	c.blocks = c.blocks[:0]
	c.tail = nil
}

// stopWriter makes the writer goroutine (if any) exit and drops the queue;
// the caller has closed the underlying conn, which unblocks a pending write.
func (c *conn) stopWriter() {
	c.wmu.Lock()
	c.wstate = wStop
	c.releaseQueueLocked()
	if c.wstarted {
		c.wcond.Signal()
	}
	c.wmu.Unlock()
}

// writeLoop drains the send queue in FIFO order, one batch of blocks per
// writev, until the conn is closed (or, after Close, the queue is empty).
func (c *conn) writeLoop() {
	var (
		batch [sendBatchBlocks]*sendBlock
		iov   [sendBatchBlocks][]byte
	)
	for {
		c.wmu.Lock()
		for len(c.blocks) == 0 && c.wstate == wRunning {
			c.wcond.Wait()
		}
		if c.wstate == wStop || len(c.blocks) == 0 {
			drained := c.wstate == wDrain
			c.wstate = wStop
			c.releaseQueueLocked()
			c.wmu.Unlock()
			if drained {
				_ = c.Conn.Close()
			}
			return
		}
		k := copy(batch[:], c.blocks)
		if batch[k-1] == c.tail {
			c.tail = nil // Writes must not append to an in-flight block
		}
		rest := copy(c.blocks, c.blocks[k:])
		clear(c.blocks[rest:])
		c.blocks = c.blocks[:rest]
		c.wmu.Unlock()

		bufs := net.Buffers(iov[:0])
		var total int64
		for _, b := range batch[:k] {
			bufs = append(bufs, b.b[:b.n])
			total += int64(b.n)
		}
		err := c.writeBatch(bufs)
		for i := range batch[:k] {
			putSendBlock(batch[i])
			batch[i] = nil
			iov[i] = nil
		}
		c.wmu.Lock()
		c.queued -= total
		c.wmu.Unlock()
		if err != nil {
			c.writeFailed(err)
			return
		}
	}
}

// writeBatch writes bufs completely. Each write to the network gets a
// deadline of WriteTimeout (capped by the drain deadline after Close); a
// write that times out after making progress is retried with a new
// deadline, so only a peer that accepts no bytes for WriteTimeout fails it.
func (c *conn) writeBatch(bufs net.Buffers) error {
	for {
		dl := time.Now().Add(c.wtimeout)
		if by := c.drainBy.Load(); by != 0 && by < dl.UnixNano() {
			dl = time.Unix(0, by)
		}
		if err := c.Conn.SetWriteDeadline(dl); err != nil {
			return err
		}
		n, err := bufs.WriteTo(c.Conn) // consumes what was written
		if err == nil {
			return nil
		}
		if n > 0 && len(bufs) > 0 && isTimeout(err) {
			if by := c.drainBy.Load(); by == 0 || time.Now().UnixNano() < by {
				continue
			}
		}
		return err
	}
}

// writeFailed ends the writer after a failed network write: the conn is
// closed and later Writes return a sticky, non-timeout error (zmq4 ignores
// timeout errors and would keep using the conn).
func (c *conn) writeFailed(err error) {
	c.wmu.Lock()
	state := c.wstate
	c.wstate = wStop
	c.releaseQueueLocked()
	timeout := isTimeout(err)
	if timeout {
		err = newLimitError(KindWriteTimeout, "peer accepted no bytes for %v", c.wtimeout)
	}
	if c.werr == nil {
		c.werr = err
	}
	c.wmu.Unlock()
	switch {
	case state == wDrain:
		// Closed by zmq4 already; the flush failed or ran out of time.
		_ = c.Conn.Close()
	case state == wRunning && timeout:
		c.closeCounting(&c.reg.stats.writeTimeouts)
	default:
		// Write error (peer reset) or we closed the conn (wStop).
		c.closeRaw()
	}
}
