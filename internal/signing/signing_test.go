package signing

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/casparianflow/casparian/sentinel/protocol"
)

func TestGenerateSignVerify(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	pub, keyPath, err := Generate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(keyPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if _, _, err := Generate(dir); err == nil {
		t.Error("Generate overwrote an existing key")
	}
	priv, err := LoadPrivate(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePublic(filepath.Join(dir, PublicFile))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("public key file: %v %v", got, err)
	}
	d := &protocol.DeployCommand{PluginName: "p", Version: "1", ArtifactHash: "ab", PublisherName: "me", Pattern: "*.csv"}
	if _, err := Verify(d); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	Sign(priv, d)
	if k, err := Verify(d); err != nil || !k.Equal(pub) {
		t.Fatalf("verify: %v", err)
	}
	for name, tamper := range map[string]func(*protocol.DeployCommand){
		"artifact": func(d *protocol.DeployCommand) { d.ArtifactHash = "cd" },
		"pattern":  func(d *protocol.DeployCommand) { d.Pattern = "*" },
		"version":  func(d *protocol.DeployCommand) { d.Version = "2" },
		"sinks":    func(d *protocol.DeployCommand) { d.Sinks = []protocol.DeploySink{{Topic: "t", URI: "parquet://x"}} },
	} {
		c := *d
		tamper(&c)
		if _, err := Verify(&c); !errors.Is(err, ErrBadSignature) {
			t.Errorf("tampered %s: %v, want a bad signature", name, err)
		}
	}
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivate(keyPath); err == nil {
		t.Error("a world-readable private key was accepted")
	}
}
