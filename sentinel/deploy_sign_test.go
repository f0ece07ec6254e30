package sentinel

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/internal/signing"
	"github.com/casparianflow/casparian/sentinel/protocol"
)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

func pubHex(k ed25519.PrivateKey) string { return hex.EncodeToString(k.Public().(ed25519.PublicKey)) }

// deployResult sends cmd and returns the ACK, or the ERR's message.
func deployResult(t *testing.T, pub *fakeWorker, cmd protocol.DeployCommand) (ack *protocol.DeployResponse, errMsg string) {
	t.Helper()
	pub.send(protocol.OpDeploy, 0, cmd)
	var m protocol.Message
	select {
	case m = <-pub.in:
	case <-time.After(waitFor):
		t.Fatal("no reply to the DEPLOY")
	}
	switch m.OpCode {
	case protocol.OpAck:
		a := ackOf(t, m)
		return &a, ""
	case protocol.OpErr:
		var p protocol.ErrorPayload
		if err := m.Unmarshal(&p); err != nil {
			t.Fatal(err)
		}
		return nil, p.Message
	}
	t.Fatalf("reply opcode %v, want ACK or ERR", m.OpCode)
	return nil, ""
}

// Only DEPLOYs signed by a trusted key are stored; the signature covers the
// plugin, its artifact hash and its routing; TOFU trusts a new key once.
func TestDeploySignatures(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.AllowUnsigned = false }})
	pub := e.dial("", false)
	alice, mallory := newKey(t), newKey(t)
	if _, err := e.st.TrustPublisher(e.ctx, "alice", "", pubHex(alice)); err != nil {
		t.Fatal(err)
	}
	signed := func(k ed25519.PrivateKey, name, version, src string) protocol.DeployCommand {
		d := deployCmd(name, version, src, "")
		d.PublisherName = "alice"
		d.Pattern = "*.csv"
		d.Subscriptions = []string{"finance"}
		d.Sinks = []protocol.DeploySink{{Topic: "totals", URI: "parquet://totals.parquet"}}
		signing.Sign(k, &d)
		return d
	}

	// Unsigned, unknown key, tampered after signing: refused, nothing stored.
	for _, c := range []struct {
		name string
		cmd  protocol.DeployCommand
		want string
	}{
		{"unsigned", deployCmd("p", "1", "src", ""), "not signed"},
		{"unknown key", signed(mallory, "p", "1", "src"), "unknown publisher key SHA256:"},
		{"tampered pattern", func() protocol.DeployCommand {
			d := signed(alice, "p", "1", "src")
			d.Pattern = "*"
			return d
		}(), "bad signature"},
		{"tampered source", func() protocol.DeployCommand {
			d := signed(alice, "p", "1", "src")
			d2 := deployCmd("p", "1", "evil", "")
			d.SourceCode, d.ArtifactHash = d2.SourceCode, d2.ArtifactHash
			return d
		}(), "bad signature"},
		{"signature of another key", func() protocol.DeployCommand {
			d := signed(alice, "p", "1", "src")
			d.PublicKey = pubHex(mallory)
			return d
		}(), "bad signature"},
	} {
		if ack, msg := deployResult(t, pub, c.cmd); ack != nil || !strings.Contains(msg, c.want) {
			t.Errorf("%s: ACK %v, ERR %q; want an ERR mentioning %q", c.name, ack, msg, c.want)
		}
	}
	if _, _, err := e.st.ActiveManifest(e.ctx, "p"); err == nil {
		t.Fatal("a refused DEPLOY stored a manifest")
	}

	// Signed by alice: stored and wired.
	ack, msg := deployResult(t, pub, signed(alice, "p", "1", "src"))
	if ack == nil || !strings.Contains(ack.Message, "tagged auto_p") {
		t.Fatalf("alice's DEPLOY: ACK %+v ERR %q", ack, msg)
	}
	subs, _ := e.st.Subscriptions(e.ctx)
	if got := strings.Join(subs["p"], ","); got != "auto_p,finance" {
		t.Errorf("subscriptions %q, want auto_p,finance", got)
	}
	sinks, _ := e.st.ConfiguredSinks(e.ctx, "p")
	if len(sinks) != 1 || sinks[0].Topic != "totals" {
		t.Errorf("sinks %+v", sinks)
	}
	// The same content again: idempotent, one rule, one manifest.
	if ack, msg := deployResult(t, pub, signed(alice, "p", "1", "src")); ack == nil {
		t.Fatalf("republishing identical content: ERR %q", msg)
	}
	rules, _ := e.st.RoutingRules(e.ctx)
	if len(rules) != 1 {
		t.Errorf("%d routing rules after publishing twice, want 1", len(rules))
	}
	if st := manifestStatuses(t, e, "p"); len(st) != 1 {
		t.Errorf("manifests %v after publishing identical content twice, want 1", st)
	}
}

func TestDeployTrustOnFirstUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{cfg: func(c *Config) { c.AllowUnsigned, c.TrustOnFirstUse = false, true }})
	pub := e.dial("", false)
	k := newKey(t)
	d := deployCmd("p", "1", "src", "")
	d.PublisherName = "bob"
	signing.Sign(k, &d)
	if ack, msg := deployResult(t, pub, d); ack == nil {
		t.Fatalf("TOFU: ERR %q", msg)
	}
	if p, ok, err := e.st.TrustedPublisher(e.ctx, pubHex(k)); err != nil || !ok || p.Name != "bob" {
		t.Errorf("bob's key after first use: %+v %v %v", p, ok, err)
	}
	// A bad signature is still refused.
	d2 := deployCmd("p", "2", "src2", "")
	d2.PublisherName = "bob"
	signing.Sign(k, &d2)
	d2.Version = "3"
	if _, msg := deployResult(t, pub, d2); !strings.Contains(msg, "bad signature") {
		t.Errorf("tampered under TOFU: %q", msg)
	}
}

// A binary plugin's manifest must be valid, and its artifact must match.
func TestDeployBinaryManifest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpt{})
	pub := e.dial("", false)
	dir := t.TempDir()
	art := filepath.Join(dir, "plugin.wasm")
	if err := os.WriteFile(art, []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, _ := manifest.HashFile(art)
	good := `{"manifest_version": 1, "name": "w", "kind": "wasm", "artifact": "` + art + `", "sha256": "` + sum + `"}`
	if ack, msg := deployResult(t, pub, deployCmd("w", "1", good, "")); ack == nil {
		t.Fatalf("valid manifest refused: %q", msg)
	}
	for _, c := range []struct{ name, src, want string }{
		{"unknown field", `{"manifest_version": 1, "name": "w", "kind": "wasm", "artifact": "` + art + `", "sha256": "` + sum + `", "colour": "red"}`,
			`unknown field "colour"`},
		{"tampered artifact", strings.Replace(good, sum, strings.Repeat("0", 64), 1), "has SHA-256"},
		{"no sha256", `{"manifest_version": 1, "name": "w", "kind": "wasm", "artifact": "` + art + `"}`, "no sha256"},
	} {
		if ack, msg := deployResult(t, pub, deployCmd("w", "2", c.src, "")); ack != nil || !strings.Contains(msg, c.want) {
			t.Errorf("%s: ACK %v ERR %q, want %q", c.name, ack, msg, c.want)
		}
	}
}
