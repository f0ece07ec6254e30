package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	zt "github.com/go-zeromq/zmq4/transport"
)

// Hardened scheme names registered with zmq4.
const (
	SchemeTCP = "ctcp" // tcp:// over network "tcp"
	SchemeIPC = "cipc" // ipc:// over network "unix"
)

// Defaults.
const (
	DefaultHandshakeTimeout     = 5 * time.Second
	DefaultMaxFrameSize         = 64<<20 + 16
	DefaultMaxMessageSize       = 256<<20 + 64
	DefaultMaxPendingHandshakes = 256
	DefaultWriteTimeout         = 30 * time.Second
	DefaultMaxSendBuffer        = 64<<20 + 1<<20 // one 64 MiB frame plus headroom

	// maxLimit keeps sums of limits far from uint64 overflow.
	maxLimit = 1 << 62
)

// Limits configures the hardened transports. Zero fields take the defaults.
type Limits struct {
	// HandshakeTimeout bounds the ZMTP greeting + security handshake.
	HandshakeTimeout time.Duration
	// MaxFrameSize is the largest frame body a peer may announce.
	MaxFrameSize uint64
	// MaxMessageSize bounds the summed bodies of one multipart message.
	// It is raised to MaxFrameSize if smaller.
	MaxMessageSize uint64
	// MaxPendingHandshakes bounds connections accepted by one listener
	// whose handshake has not been handed to zmq4 yet; extra conns are
	// closed immediately.
	MaxPendingHandshakes int
	// WriteTimeout is the deadline of each write to the network on the
	// asynchronous send path: a peer that accepts no bytes for that long
	// is dropped.
	WriteTimeout time.Duration
	// MaxSendBuffer bounds the bytes queued (and being written) for one
	// peer after its handshake; a Write that would exceed it drops the
	// peer. Negative disables the asynchronous send path: writes then go
	// straight to the network and may block zmq4's socket-wide send lock
	// (zmq4's own behaviour).
	MaxSendBuffer int64
}

// DefaultLimits returns the default limits.
func DefaultLimits() Limits {
	return Limits{
		HandshakeTimeout:     DefaultHandshakeTimeout,
		MaxFrameSize:         DefaultMaxFrameSize,
		MaxMessageSize:       DefaultMaxMessageSize,
		MaxPendingHandshakes: DefaultMaxPendingHandshakes,
		WriteTimeout:         DefaultWriteTimeout,
		MaxSendBuffer:        DefaultMaxSendBuffer,
	}
}

func (l Limits) normalized() Limits {
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.MaxFrameSize == 0 {
		l.MaxFrameSize = DefaultMaxFrameSize
	}
	if l.MaxMessageSize == 0 {
		l.MaxMessageSize = DefaultMaxMessageSize
	}
	l.MaxFrameSize = min(l.MaxFrameSize, maxLimit)
	l.MaxMessageSize = min(max(l.MaxMessageSize, l.MaxFrameSize), maxLimit)
	if l.MaxPendingHandshakes <= 0 {
		l.MaxPendingHandshakes = DefaultMaxPendingHandshakes
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.MaxSendBuffer == 0 {
		l.MaxSendBuffer = DefaultMaxSendBuffer
	}
	l.MaxSendBuffer = min(l.MaxSendBuffer, maxLimit)
	return l
}

// Stats counts connections dropped by the hardened transports since the
// process started.
type Stats struct {
	HandshakeTimeouts uint64 // handshake not finished within HandshakeTimeout
	HandshakeFailures uint64 // bad greeting/first command, I/O error during pre-handshake
	OversizedFrames   uint64 // frame header above MaxFrameSize
	OversizedMessages uint64 // multipart message above MaxMessageSize
	RejectedPending   uint64 // closed because MaxPendingHandshakes was reached
	SendOverflows     uint64 // a Write would have queued more than MaxSendBuffer
	WriteTimeouts     uint64 // the peer accepted no bytes for WriteTimeout
	AuthFailures      uint64 // wrong or missing PLAIN password, failed TLS handshake
}

type counters struct {
	handshakeTimeouts atomic.Uint64
	handshakeFailures atomic.Uint64
	oversizedFrames   atomic.Uint64
	oversizedMessages atomic.Uint64
	rejectedPending   atomic.Uint64
	sendOverflows     atomic.Uint64
	writeTimeouts     atomic.Uint64
	authFailures      atomic.Uint64
}

type registry struct {
	limits    atomic.Pointer[Limits]
	server    atomic.Pointer[ServerSecurity]
	clientTLS atomic.Pointer[tls.Config]
	stats     counters
}

var (
	global       registry
	registerMu   sync.Mutex
	registered   bool
	errNoLimits  = errors.New("transport: Register has not been called")
	errBadScheme = errors.New("transport: unsupported endpoint scheme")
)

// Register installs the hardened transports under SchemeTCP and SchemeIPC
// with zmq4. Call it from main before creating sockets. Calling it again
// replaces the limits used for connections created afterwards.
func Register(l Limits) error {
	l = l.normalized()
	registerMu.Lock()
	defer registerMu.Unlock()
	global.limits.Store(&l)
	if registered {
		return nil
	}
	if err := zmq4.RegisterTransport(SchemeTCP, &hardened{network: "tcp", reg: &global}); err != nil {
		return fmt.Errorf("transport: register %s: %w", SchemeTCP, err)
	}
	if err := zmq4.RegisterTransport(SchemeIPC, &hardened{network: "unix", reg: &global}); err != nil {
		return fmt.Errorf("transport: register %s: %w", SchemeIPC, err)
	}
	if err := zmq4.RegisterTransport(SchemeTLS, &hardened{network: "tcp", tls: true, reg: &global}); err != nil {
		return fmt.Errorf("transport: register %s: %w", SchemeTLS, err)
	}
	registered = true
	return nil
}

// CurrentStats returns a snapshot of the drop counters.
func CurrentStats() Stats {
	s := &global.stats
	return Stats{
		HandshakeTimeouts: s.handshakeTimeouts.Load(),
		HandshakeFailures: s.handshakeFailures.Load(),
		OversizedFrames:   s.oversizedFrames.Load(),
		OversizedMessages: s.oversizedMessages.Load(),
		RejectedPending:   s.rejectedPending.Load(),
		SendOverflows:     s.sendOverflows.Load(),
		WriteTimeouts:     s.writeTimeouts.Load(),
		AuthFailures:      s.authFailures.Load(),
	}
}

// Endpoint rewrites a user endpoint to its hardened scheme:
// tcp:// -> ctcp://, ipc:// -> cipc://, tls:// -> ctls://. Hardened endpoints are returned
// unchanged; any other scheme is an error (there is no hardened
// inproc/udp).
func Endpoint(ep string) (string, error) {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return "", fmt.Errorf("%w: %q", errBadScheme, ep)
	}
	switch scheme {
	case "tcp", SchemeTCP:
		return SchemeTCP + "://" + rest, nil
	case "ipc", SchemeIPC:
		return SchemeIPC + "://" + rest, nil
	case "tls", SchemeTLS:
		return SchemeTLS + "://" + rest, nil
	}
	return "", fmt.Errorf("%w: %q", errBadScheme, ep)
}

// hardened implements zmq4's transport.Transport.
type hardened struct {
	network string
	tls     bool // ZMTP over TLS (SchemeTLS)
	reg     *registry
}

func (h *hardened) limits() (Limits, error) {
	p := h.reg.limits.Load()
	if p == nil {
		return Limits{}, errNoLimits
	}
	return *p, nil
}

// Dial dials addr and wraps the conn (handshake deadline, frame caps).
func (h *hardened) Dial(ctx context.Context, dialer zt.Dialer, addr string) (net.Conn, error) {
	lim, err := h.limits()
	if err != nil {
		return nil, err
	}
	c, err := dialer.DialContext(ctx, h.network, addr)
	if err != nil {
		return nil, err
	}
	if h.tls {
		tc, err := h.dialTLS(ctx, c, addr, lim)
		if err != nil {
			_ = c.Close()
			return nil, err
		}
		c = tc
	}
	return newConn(c, h.reg, lim), nil
}

// Listen listens on addr; see listener.
func (h *hardened) Listen(ctx context.Context, addr string) (net.Listener, error) {
	lim, err := h.limits()
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	sec := h.reg.serverSecurity()
	if h.tls && sec.TLS == nil {
		return nil, errors.New("transport: a tls:// endpoint needs a server certificate (--tls-cert, --tls-key, --tls-client-ca)")
	}
	inner, err := lc.Listen(ctx, h.network, addr)
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if h.tls {
		tlsCfg = sec.TLS
	}
	return newListener(inner, h.reg, lim, sec.PlainPassword, tlsCfg), nil
}

// Addr normalises an endpoint address like zmq4's tcp/ipc transports.
func (h *hardened) Addr(ep string) (string, error) {
	return zt.New(h.network).Addr(ep)
}

var _ zt.Transport = (*hardened)(nil)

// dialTLS runs the client side of the TLS handshake on c under the
// handshake deadline, so certificate errors surface as the dial's error.
func (h *hardened) dialTLS(ctx context.Context, c net.Conn, addr string, lim Limits) (net.Conn, error) {
	cfg := h.reg.clientTLS.Load()
	if cfg == nil {
		return nil, errors.New("transport: a tls:// endpoint needs a client certificate (--tls-cert, --tls-key, --tls-ca)")
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		cfg.ServerName = host
	}
	tc := tls.Client(c, cfg)
	hctx, cancel := context.WithTimeout(ctx, lim.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}
