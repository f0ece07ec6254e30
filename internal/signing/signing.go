// Package signing holds the publisher keys (Ed25519) that sign DEPLOYs:
// generating and storing them (private key file mode 0600), and signing
// and verifying a DEPLOY over protocol.DeployCommand.SigningBytes.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/casparianflow/casparian/sentinel/protocol"
)

// File names in a key directory.
const (
	PrivateFile = "publisher.key"
	PublicFile  = "publisher.pub"
)

// DefaultDir is where keys live unless told otherwise:
// $XDG_CONFIG_HOME/casparian (~/.config/casparian).
func DefaultDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user config directory (%v): pass a key directory", err)
	}
	return filepath.Join(d, "casparian"), nil
}

// Generate writes a new key pair into dir (created 0700): the private key
// as PKCS#8 PEM with mode 0600, the public key as hex. It refuses to
// overwrite an existing private key.
func Generate(dir string) (pub ed25519.PublicKey, keyPath string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	keyPath = filepath.Join(dir, PrivateFile)
	if _, err := os.Stat(keyPath); err == nil {
		return nil, "", fmt.Errorf("%s exists: a publisher key is there already (remove it first to replace it)", keyPath)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, "", err
	}
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, "", err
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(keyPath)
		return nil, "", err
	}
	if err := f.Close(); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, PublicFile), []byte(hex.EncodeToString(pub)+"\n"), 0o644); err != nil {
		return nil, "", err
	}
	return pub, keyPath, nil
}

// LoadPrivate reads a private key file written by Generate. A file that
// others can read is refused: anyone who reads it can publish as you.
func LoadPrivate(path string) (ed25519.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("publisher key: %w (create one with: casparian keys generate)", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("publisher key %s has mode %s: others can read it; chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("publisher key %s is not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("publisher key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("publisher key %s is not an Ed25519 key", path)
	}
	return priv, nil
}

// ParsePublic reads a public key: hex text, or a file holding it.
func ParsePublic(s string) (ed25519.PublicKey, error) {
	text := strings.TrimSpace(s)
	if b, err := os.ReadFile(s); err == nil {
		text = strings.TrimSpace(string(b))
	}
	raw, err := hex.DecodeString(text)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key %q: want %d bytes of hex (a publisher.pub file)", truncate(s, 80), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}

// Fingerprint is a short, stable name for a public key: "SHA256:" and the
// first 16 hex digits of its hash.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "SHA256:" + hex.EncodeToString(sum[:8])
}

// Sign fills d.PublicKey and d.Signature.
func Sign(priv ed25519.PrivateKey, d *protocol.DeployCommand) {
	d.PublicKey = hex.EncodeToString(priv.Public().(ed25519.PublicKey))
	d.Signature = hex.EncodeToString(ed25519.Sign(priv, d.SigningBytes()))
}

// Errors of Verify.
var (
	ErrUnsigned     = errors.New("the DEPLOY is not signed")
	ErrBadSignature = errors.New("the signature does not verify")
)

// Verify checks d's signature with d's public key, which it returns. The
// caller decides whether that key is trusted.
func Verify(d *protocol.DeployCommand) (ed25519.PublicKey, error) {
	if d.Signature == "" || d.PublicKey == "" {
		return nil, ErrUnsigned
	}
	pub, err := ParsePublic(d.PublicKey)
	if err != nil {
		return nil, err
	}
	sig, err := hex.DecodeString(d.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, d.SigningBytes(), sig) {
		return pub, ErrBadSignature
	}
	return pub, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
