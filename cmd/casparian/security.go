package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"os"

	"github.com/casparianflow/casparian/sentinel/transport"
)

// envSecretFile names the default of --secret-file.
const envSecretFile = "CASPARIAN_SECRET_FILE"

// securityFlags are how a daemon or the publisher authenticates on the
// ZeroMQ endpoints: a shared secret (ZeroMQ PLAIN) and, for tls://
// endpoints, certificates (mutual TLS).
type securityFlags struct {
	secretFile, tlsCert, tlsKey, tlsCA string
}

func (f *securityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.secretFile, "secret-file", os.Getenv(envSecretFile),
		"file holding the shared secret the sentinel requires of workers and publishers (ZeroMQ PLAIN; mode 0600; see casparian keys secret) (default $"+envSecretFile+")")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate presented on tls:// endpoints")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "PEM CA certificate(s) the other side's certificate must chain to (tls:// endpoints)")
}

func (f *securityFlags) secret() ([]byte, error) {
	if f.secretFile == "" {
		return nil, nil
	}
	return transport.ReadSecret(f.secretFile)
}

func (f *securityFlags) tlsSet() (bool, error) {
	n := 0
	for _, v := range []string{f.tlsCert, f.tlsKey, f.tlsCA} {
		if v != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		return false, errors.New("--tls-cert, --tls-key and --tls-ca go together")
	}
	return n == 3, nil
}

// server is the sentinel's side.
func (f *securityFlags) server() (transport.ServerSecurity, error) {
	var s transport.ServerSecurity
	var err error
	if s.PlainPassword, err = f.secret(); err != nil {
		return s, err
	}
	if ok, err := f.tlsSet(); err != nil || !ok {
		return s, err
	}
	s.TLS, err = transport.ServerTLSConfig(f.tlsCert, f.tlsKey, f.tlsCA)
	return s, err
}

// client is a worker's or publisher's side.
func (f *securityFlags) client() ([]byte, *tls.Config, error) {
	secret, err := f.secret()
	if err != nil {
		return nil, nil, err
	}
	if ok, err := f.tlsSet(); err != nil || !ok {
		return secret, nil, err
	}
	cfg, err := transport.ClientTLSConfig(f.tlsCert, f.tlsKey, f.tlsCA)
	return secret, cfg, err
}
