package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/plain"

	"github.com/casparianflow/casparian/internal/testenv"
)

const testSecret = "correct horse battery staple"

// withServerSecurity sets the listeners' security for one test.
func withServerSecurity(t *testing.T, s ServerSecurity) {
	t.Helper()
	SetServerSecurity(s)
	t.Cleanup(func() { SetServerSecurity(ServerSecurity{}) })
}

func plainRouter(t *testing.T, ep string) (zmq4.Socket, string) {
	t.Helper()
	return newRouter(t, ep, zmq4.WithSecurity(plain.Security("", "")))
}

// dealerWith dials ep with the given options and sends one message; it
// returns the dial or send error.
func dealerWith(t *testing.T, ep string, opts ...zmq4.Option) (zmq4.Socket, error) {
	t.Helper()
	d := zmq4.NewDealer(context.Background(), append([]zmq4.Option{quiet, zmq4.WithDialerMaxRetries(0),
		zmq4.WithDialerTimeout(5 * time.Second)}, opts...)...)
	t.Cleanup(func() { _ = d.Close() })
	if err := d.Dial(ep); err != nil {
		return d, err
	}
	return d, d.Send(zmq4.NewMsgFromString([]string{"hello"}))
}

// expectNothing checks that router receives no message for a while.
func expectNothing(t *testing.T, router zmq4.Socket, d time.Duration) {
	t.Helper()
	got := make(chan zmq4.Msg, 1)
	go func() {
		m, err := router.Recv()
		if err == nil {
			got <- m
		}
	}()
	select {
	case m := <-got:
		t.Fatalf("the router received a message from an unauthenticated peer: %q", m.Frames)
	case <-time.After(d):
	}
}

func TestPlainAuth(t *testing.T) {
	withServerSecurity(t, ServerSecurity{PlainPassword: []byte(testSecret)})
	for _, scheme := range []string{SchemeTCP, SchemeIPC} {
		t.Run(scheme, func(t *testing.T) {
			ep := SchemeTCP + "://127.0.0.1:0"
			if scheme == SchemeIPC {
				ep = SchemeIPC + "://" + filepath.Join(t.TempDir(), "s.ipc")
			}
			router, dial := plainRouter(t, ep)
			before := CurrentStats().AuthFailures

			// The right secret: messages flow both ways.
			d, err := dealerWith(t, dial, zmq4.WithSecurity(plain.Security("worker-1", testSecret)))
			if err != nil {
				t.Fatalf("authenticated dealer: %v", err)
			}
			m := within(t, 10*time.Second, "router recv", router.Recv)
			if string(m.Frames[1]) != "hello" {
				t.Fatalf("router got %q", m.Frames)
			}
			within(t, 10*time.Second, "router send", func() (struct{}, error) {
				return struct{}{}, router.Send(zmq4.NewMsgFrom(m.Frames[0], []byte("welcome")))
			})
			if rep := within(t, 10*time.Second, "dealer recv", d.Recv); string(rep.Frames[0]) != "welcome" {
				t.Fatalf("dealer got %q", rep.Frames)
			}

			// A wrong secret, and no secret at all (NULL): refused at the
			// handshake, nothing reaches the router.
			if _, err := dealerWith(t, dial, zmq4.WithSecurity(plain.Security("worker-2", "not the secret at all"))); err == nil {
				t.Fatal("a dealer with the wrong secret connected and sent")
			}
			if _, err := dealerWith(t, dial); err == nil {
				t.Fatal("a dealer without a secret connected and sent")
			}
			expectNothing(t, router, time.Second)
			if got := CurrentStats().AuthFailures - before; got < 2 {
				t.Fatalf("AuthFailures grew by %d, want >= 2", got)
			}
		})
	}
}

func TestParseHello(t *testing.T) {
	hello := append([]byte{5}, "HELLO"...)
	hello = append(hello, 1, 'u', 3, 'p', 'w', 'd')
	user, pass, err := parseHello(hello)
	if err != nil || user != "u" || string(pass) != "pwd" {
		t.Fatalf("parseHello = %q, %q, %v", user, pass, err)
	}
	for _, bad := range [][]byte{nil, []byte("\x05HELLX"), hello[:7], hello[:len(hello)-1], append(hello, 0)} {
		if _, _, err := parseHello(bad); err == nil {
			t.Fatalf("parseHello(%q) accepted", bad)
		}
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("  "+testSecret+"\n# comment\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecret(good); err != nil || string(s) != testSecret {
		t.Fatalf("ReadSecret = %q, %v", s, err)
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte(testSecret), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecret(open); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable secret: %v", err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecret(short); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("short secret: %v", err)
	}
}

func TestMutualTLS(t *testing.T) {
	pki := testenv.NewPKI(t)
	srv, err := ServerTLSConfig(pki.ServerCert, pki.ServerKey, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	withServerSecurity(t, ServerSecurity{TLS: srv, PlainPassword: []byte(testSecret)})
	t.Cleanup(func() { SetClientTLS(nil) })
	router, dial := plainRouter(t, SchemeTLS+"://127.0.0.1:0")
	secret := zmq4.WithSecurity(plain.Security("w", testSecret))
	before := CurrentStats().AuthFailures

	// A client with a certificate from the right CA and the secret.
	cli, err := ClientTLSConfig(pki.ClientCert, pki.ClientKey, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	SetClientTLS(cli)
	d, err := dealerWith(t, dial, secret)
	if err != nil {
		t.Fatalf("mTLS dealer: %v", err)
	}
	m := within(t, 10*time.Second, "router recv", router.Recv)
	within(t, 10*time.Second, "router send", func() (struct{}, error) {
		return struct{}{}, router.Send(zmq4.NewMsgFrom(m.Frames[0], []byte("over tls")))
	})
	if rep := within(t, 10*time.Second, "dealer recv", d.Recv); string(rep.Frames[0]) != "over tls" {
		t.Fatalf("dealer got %q", rep.Frames)
	}

	// A client certificate from another CA: refused in the TLS handshake.
	other, err := ClientTLSConfig(pki.OtherClientCert, pki.OtherClientKey, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	SetClientTLS(other)
	if _, err := dealerWith(t, dial, secret); err == nil {
		t.Fatal("a client with another CA's certificate connected and sent")
	}
	// No client certificate at all.
	noCert := &tls.Config{RootCAs: cli.RootCAs, MinVersion: tls.VersionTLS13}
	SetClientTLS(noCert)
	if _, err := dealerWith(t, dial, secret); err == nil {
		t.Fatal("a client without a certificate connected and sent")
	}
	// A client that does not trust the sentinel's CA.
	SetClientTLS(&tls.Config{Certificates: cli.Certificates, RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS13})
	_, err = dealerWith(t, dial, secret)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client that does not trust the server: %v", err)
	}
	// Plain TCP to the TLS port: refused.
	c, err := net.Dial("tcp", strings.TrimPrefix(dial, SchemeTLS+"://"))
	if err == nil {
		_, _ = c.Write(plainGreeting)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if n >= greetingLen && buf[0] == 0xFF {
			t.Fatal("the TLS listener answered a plain-TCP ZMTP greeting")
		}
		c.Close()
	}
	expectNothing(t, router, time.Second)
	if got := CurrentStats().AuthFailures - before; got < 3 {
		t.Fatalf("AuthFailures grew by %d, want >= 3", got)
	}
}
