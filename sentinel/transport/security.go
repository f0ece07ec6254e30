package transport

import (
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
	"github.com/go-zeromq/zmq4/security/plain"
)

// SchemeTLS is the hardened scheme of tls:// endpoints: ZMTP over TLS 1.3
// on network "tcp".
const SchemeTLS = "ctls"

// ServerSecurity is what hardened listeners demand of their peers.
type ServerSecurity struct {
	// PlainPassword, when set, makes every listener speak the ZMTP PLAIN
	// mechanism and accept only peers whose HELLO carries this password
	// (any user name). The check runs in the listener's pre-handshake,
	// before zmq4 sees the conn: a peer with a wrong or missing password
	// never gets a message through. The ROUTER itself must be created with
	// zmq4.WithSecurity(plain.Security("", "")) (zmq4's PLAIN server does
	// not check credentials itself).
	PlainPassword []byte
	// TLS configures tls:// listeners. It should require and verify client
	// certificates (mutual TLS); see ServerTLSConfig.
	TLS *tls.Config
}

// SetServerSecurity sets the security of listeners created afterwards.
func SetServerSecurity(s ServerSecurity) {
	s.PlainPassword = append([]byte(nil), s.PlainPassword...)
	global.server.Store(&s)
}

// SetClientTLS sets the TLS configuration of tls:// dials made afterwards
// (the client certificate and the CA that signed the sentinel's).
func SetClientTLS(cfg *tls.Config) {
	global.clientTLS.Store(cfg)
}

func (r *registry) serverSecurity() ServerSecurity {
	if p := r.server.Load(); p != nil {
		return *p
	}
	return ServerSecurity{}
}

// plainGreeting is the greeting zmq4 v0.17.0 writes for a socket with
// PLAIN security: as nullGreeting with mechanism "PLAIN" (zmq4 never sets
// the as-server byte).
var plainGreeting = func() []byte {
	g := append([]byte(nil), nullGreeting...)
	clear(g[12:32])
	copy(g[12:32], "PLAIN")
	return g
}()

// ErrAuthFailed is returned (wrapped) for a peer that failed the PLAIN check.
var ErrAuthFailed = errors.New("authentication failed")

// checkPlain verifies the peer's greeting and the HELLO command that the
// pre-handshake read (pre = greeting + first command frame). On failure it
// tells the peer with a ZMTP ERROR command and returns an error wrapping
// ErrAuthFailed.
func checkPlain(c net.Conn, pre []byte, password []byte) error {
	// preHandshake checked that the peer's greeting offers PLAIN.
	body := pre[greetingLen:]
	// Skip the frame header (flags + 1- or 8-byte size).
	if body[0]&flagLong != 0 {
		body = body[9:]
	} else {
		body = body[2:]
	}
	user, pass, err := parseHello(body)
	if err != nil {
		writeError(c, "malformed HELLO")
		return fmt.Errorf("%w: %v", ErrAuthFailed, err)
	}
	if subtle.ConstantTimeCompare(pass, password) != 1 {
		writeError(c, "authentication failed")
		return fmt.Errorf("%w: wrong password for user %q", ErrAuthFailed, user)
	}
	return nil
}

// parseHello parses a PLAIN HELLO command body:
// 5 "HELLO" username-len username password-len password.
func parseHello(b []byte) (user string, pass []byte, err error) {
	if len(b) < 6 || b[0] != 5 || string(b[1:6]) != "HELLO" {
		return "", nil, errors.New("first command is not HELLO")
	}
	b = b[6:]
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, errors.New("HELLO: truncated user name")
	}
	user, b = string(b[1:1+int(b[0])]), b[1+int(b[0]):]
	if len(b) < 1 || len(b) != 1+int(b[0]) {
		return "", nil, errors.New("HELLO: bad password length")
	}
	return user, b[1:], nil
}

// writeError sends a ZMTP ERROR command (best effort; the conn is closed
// afterwards).
func writeError(c net.Conn, reason string) {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	body := append([]byte{5}, "ERROR"...)
	body = append(body, byte(len(reason)))
	body = append(body, reason...)
	_, _ = c.Write(append([]byte{flagCommand, byte(len(body))}, body...))
}

// ReadSecret reads a shared secret from path: the first line, surrounding
// spaces trimmed. The file must not be readable by group or others, and the
// secret must be at least 16 bytes.
func ReadSecret(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secret file %s is readable by others (mode %v): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	line = strings.TrimSpace(line)
	switch {
	case len(line) < 16:
		return nil, fmt.Errorf("secret file %s: the secret is %d bytes; use at least 16 (e.g. casparian keys secret %s)", path, len(line), path)
	case len(line) > 255:
		return nil, fmt.Errorf("secret file %s: the secret is %d bytes; ZMTP PLAIN allows at most 255", path, len(line))
	}
	return []byte(line), nil
}

// ServerTLSConfig builds the configuration of tls:// listeners: the
// sentinel's certificate and key, and the CA whose certificates clients must
// present (mutual TLS, TLS 1.3 only).
func ServerTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, pool, err := loadTLS(certFile, keyFile, clientCAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: cert, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13}, nil
}

// ClientTLSConfig builds the configuration of tls:// dials: the client's
// certificate and key, and the CA that signed the sentinel's certificate.
// The sentinel's name is taken from the endpoint when dialling.
func ClientTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, pool, err := loadTLS(certFile, keyFile, caFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: cert, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

func loadTLS(certFile, keyFile, caFile string) ([]tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: load certificate %s / key %s: %w", certFile, keyFile, err)
	}
	pool, err := loadCAs(caFile)
	if err != nil {
		return nil, nil, err
	}
	return []tls.Certificate{cert}, pool, nil
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// ClientSecurity is the socket option of a peer dialling a sentinel:
// ZeroMQ PLAIN with user and the shared secret, or NULL when secret is
// empty.
func ClientSecurity(user string, secret []byte) zmq4.Option {
	if len(secret) == 0 {
		return zmq4.WithSecurity(null.Security())
	}
	if user == "" {
		user = "casparian"
	}
	if len(user) > 255 {
		user = user[:255]
	}
	return zmq4.WithSecurity(plain.Security(user, string(secret)))
}

// ExplainDialError adds what to do to the errors zmq4 returns when the
// sentinel refuses a peer's credentials.
func ExplainDialError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "security/plain"):
		return fmt.Errorf("%w (the sentinel refused our credentials: --secret-file must hold the sentinel's shared secret)", err)
	case strings.Contains(msg, "unsupported security mechanism"):
		return fmt.Errorf("%w (the sentinel and this peer disagree on authentication: pass the same --secret-file to both, or to neither)", err)
	case strings.Contains(msg, "certificate"), strings.Contains(msg, "tls:"):
		return fmt.Errorf("%w (check --tls-cert/--tls-key and that --tls-ca holds the CA of the other side's certificate)", err)
	}
	return err
}

// WriteSecret writes a new random shared secret (32 bytes, base64url) to
// path with mode 0600. An existing file is not overwritten.
func WriteSecret(path string) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("secret file: %w", err)
	}
	if _, err := f.WriteString(base64.RawURLEncoding.EncodeToString(b[:]) + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
