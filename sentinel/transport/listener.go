package transport

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// listener accepts conns in its own loop and performs the network part of
// the ZMTP handshake in one goroutine per conn, so that zmq4's accept loop
// (which runs the handshake synchronously) only ever receives conns whose
// peer greeting and first command are already buffered.
type listener struct {
	inner    net.Listener
	reg      *registry
	lim      Limits
	password []byte      // PLAIN password peers must present; nil: NULL
	tls      *tls.Config // set on tls:// listeners

	ready chan *conn
	done  chan struct{}
	sem   chan struct{}

	mu      sync.Mutex
	pending map[*conn]struct{}
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

func newListener(inner net.Listener, reg *registry, lim Limits, password []byte, tlsCfg *tls.Config) *listener {
	l := &listener{
		inner:    inner,
		reg:      reg,
		lim:      lim,
		password: password,
		tls:      tlsCfg,
		ready:    make(chan *conn),
		done:     make(chan struct{}),
		sem:      make(chan struct{}, lim.MaxPendingHandshakes),
		pending:  make(map[*conn]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary failure (e.g. EMFILE): back off like net/http.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-l.done:
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case l.sem <- struct{}{}:
		default:
			l.reg.stats.rejectedPending.Add(1)
			_ = raw.Close()
			continue
		}
		if l.tls != nil {
			// The TLS handshake runs inside the pre-handshake's first
			// write, under the handshake deadline newConn arms.
			raw = tls.Server(raw, l.tls)
		}
		hc := newConn(raw, l.reg, l.lim)
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			<-l.sem
			_ = hc.Close()
			return
		default:
		}
		l.pending[hc] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(hc)
	}
}

func (l *listener) untrack(hc *conn) {
	l.mu.Lock()
	delete(l.pending, hc)
	l.mu.Unlock()
}

func (l *listener) handshake(hc *conn) {
	defer l.wg.Done()
	defer func() { <-l.sem }()
	defer l.untrack(hc)

	greeting := nullGreeting
	if l.password != nil {
		greeting = plainGreeting
	}
	pre, err := preHandshake(hc.Conn, l.lim, greeting)
	if err == nil && l.password != nil {
		err = checkPlain(hc.Conn, pre, l.password)
	}
	if err != nil {
		var (
			le *LimitError
			ne net.Error
		)
		tc, isTLS := hc.Conn.(*tls.Conn)
		switch {
		case errors.Is(err, ErrAuthFailed), isTLS && !tc.ConnectionState().HandshakeComplete:
			hc.closeCounting(&l.reg.stats.authFailures)
		case errors.As(err, &le):
			hc.violation(le)
		case errors.As(err, &ne) && ne.Timeout():
			hc.closeCounting(&l.reg.stats.handshakeTimeouts)
		default:
			hc.closeCounting(&l.reg.stats.handshakeFailures)
		}
		return
	}
	hc.pre = pre
	hc.swallow = append([]byte(nil), greeting...)
	select {
	case l.ready <- hc:
	case <-l.done:
		_ = hc.Close()
	}
}

// Accept returns the next conn whose peer greeting and first command have
// been received.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case hc := <-l.ready:
		return hc, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: l.inner.Addr().Network(), Addr: l.inner.Addr(), Err: net.ErrClosed}
	}
}

// Close stops accepting, closes conns still in the pre-handshake and waits
// for the listener's goroutines.
func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		close(l.done)
		for hc := range l.pending {
			_ = hc.Close()
		}
		l.mu.Unlock()
		l.closeErr = l.inner.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// Addr returns the listener's network address.
func (l *listener) Addr() net.Addr { return l.inner.Addr() }
