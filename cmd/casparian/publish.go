package main

// Publishing signed plugins:
//
//	casparian keys generate [--dir DIR]
//	casparian keys trust [--database DB] --name NAME [--email E] PUBLIC_KEY|FILE
//	casparian keys list [--database DB]
//	casparian publish [--connect tcp://HOST:5555] [--key FILE] [--dry-run] PLUGIN

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/internal/signing"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/transport"
)

func cmdKeys(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := "Usage: casparian keys generate [--dir DIR]\n       casparian keys trust [--database DB] --name NAME [--email E] PUBLIC_KEY|FILE\n       casparian keys list [--database DB]\n       casparian keys secret FILE\n"
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch sub {
	case "generate":
		dir := fs.String("dir", "", "key directory (default: the user config dir, e.g. ~/.config/casparian)")
		if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
			return rc
		}
		d := *dir
		if d == "" {
			var err error
			if d, err = signing.DefaultDir(); err != nil {
				fmt.Fprintf(stderr, "casparian keys generate: %v\n", err)
				return 1
			}
		}
		pub, keyPath, err := signing.Generate(d)
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys generate: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "private key: %s (mode 0600; keep it secret)\npublic key:  %s (%s)\n", keyPath, hex.EncodeToString(pub), signing.Fingerprint(pub))
		fmt.Fprintf(stdout, "next, on the sentinel's database: casparian keys trust --name %s %s\n", shellQuote(currentUser()), hex.EncodeToString(pub))
		return 0
	case "trust":
		db := databaseFlag(fs)
		name := fs.String("name", "", "publisher name (required)")
		email := fs.String("email", "", "publisher e-mail")
		if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
			return rc
		}
		if *name == "" || fs.NArg() != 1 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		pub, err := signing.ParsePublic(fs.Arg(0))
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys trust: %v\n", err)
			return 2
		}
		s, err := openStore(ctx, *db)
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys trust: %v\n", err)
			return 1
		}
		defer s.Close()
		id, err := s.TrustPublisher(ctx, *name, *email, hex.EncodeToString(pub))
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys trust: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "publisher %d %s: key %s may publish\n", id, *name, signing.Fingerprint(pub))
		return 0
	case "secret":
		if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
			return rc
		}
		if fs.NArg() != 1 {
			fmt.Fprint(stderr, usage)
			return 2
		}
		if err := transport.WriteSecret(fs.Arg(0)); err != nil {
			fmt.Fprintf(stderr, "casparian keys secret: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "shared secret written to %s (mode 0600)\n", fs.Arg(0))
		fmt.Fprintf(stdout, "give it to the sentinel, its workers and publishers: --secret-file %s (or $%s)\n", fs.Arg(0), envSecretFile)
		return 0
	case "list":
		db := databaseFlag(fs)
		if rc := parseAdminFlags(fs, args[1:]); rc >= 0 {
			return rc
		}
		s, err := openExistingStore(ctx, *db)
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys list: %v\n", err)
			return 1
		}
		defer s.Close()
		ps, err := s.Publishers(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "casparian keys list: %v\n", err)
			return 1
		}
		if len(ps) == 0 {
			fmt.Fprintln(stdout, "no trusted publisher keys; add one with: casparian keys trust --name NAME PUBLIC_KEY")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tKEY\tSINCE\tLAST PUBLISHED")
		for _, p := range ps {
			fp := p.PublicKey
			if pub, err := signing.ParsePublic(p.PublicKey); err == nil {
				fp = signing.Fingerprint(pub)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", p.ID, p.Name, fp, orDash(p.CreatedAt), orDash(p.LastActive))
		}
		tw.Flush()
		return 0
	}
	fmt.Fprint(stderr, usage)
	return 2
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "me"
}

func cmdPublish(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	connect := fs.String("connect", "tcp://127.0.0.1:5555", "the sentinel's endpoint")
	keyFlag := fs.String("key", "", "private key (default: publisher.key in the user config dir; see casparian keys generate)")
	publisher := fs.String("publisher", currentUser(), "publisher name recorded with the plugin")
	version := fs.String("version", "", "version (default: the manifest's, else 0.0.0)")
	pattern := fs.String("pattern", "", "routing glob: files matching it get tag auto_<plugin>, which the plugin subscribes to")
	requirements := fs.String("requirements", "", "pip requirements file of a Python plugin: workers run it in an environment with them installed")
	var subs, sinks stringsFlag
	fs.Var(&subs, "subscribe", "also subscribe the plugin to this tag (repeatable)")
	fs.Var(&sinks, "sink", "TOPIC=URI: send a topic to a sink (repeatable)")
	dryRun := fs.Bool("dry-run", false, "check, hash and sign, print what would be sent, send nothing")
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for the sentinel's answer")
	var sec securityFlags
	sec.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: casparian publish [flags] PLUGIN\n\nPublish a plugin (a .py file, a go-plugin executable, a .wasm module or a manifest .json)\n"+
			"to the sentinel, signed with your publisher key. Publishing the same content again changes nothing.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if rc := parseAdminFlags(fs, args); rc >= 0 {
		return rc
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "casparian publish: "+format+"\n", a...)
		return 1
	}
	m, err := manifest.Resolve(fs.Arg(0))
	if err != nil {
		return fail("%v", err)
	}
	if err := m.Verify(); err != nil {
		return fail("%v", err)
	}
	if *version != "" {
		m.Version = *version
	}
	if m.Version == "" {
		m.Version = "0.0.0"
	}
	if *pattern != "" {
		m.Pattern = *pattern
	}
	m.Subscriptions = append(m.Subscriptions, subs...)
	for _, s := range sinks {
		topic, uri, ok := strings.Cut(s, "=")
		if !ok || topic == "" || uri == "" {
			fmt.Fprintf(stderr, "casparian publish: --sink %q: want TOPIC=URI\n", s)
			return 2
		}
		m.Sinks = append(m.Sinks, manifest.Sink{Topic: topic, URI: uri})
	}
	if *requirements != "" {
		b, err := os.ReadFile(*requirements)
		if err != nil {
			return fail("--requirements: %v", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				m.Requirements = append(m.Requirements, l)
			}
		}
	}
	if len(m.Requirements) > 0 && m.Kind != guest.KindPython {
		fmt.Fprintf(stderr, "casparian publish: requirements apply to Python plugins only; %s is a %s plugin\n", m.Name, m.Kind)
		return 2
	}
	lockfile := ""
	if len(m.Requirements) > 0 {
		lockfile = strings.Join(m.Requirements, "\n") + "\n"
	}
	source := string(m.Encode()) // a binary plugin is published as its manifest (artifact path and SHA-256)
	if m.Kind == guest.KindPython {
		b, err := os.ReadFile(m.Artifact)
		if err != nil {
			return fail("%v", err)
		}
		source = string(b)
	}
	sum := sha256.Sum256([]byte(source + lockfile))
	d := protocol.DeployCommand{PluginName: m.Name, Version: m.Version, SourceCode: source, LockfileContent: lockfile,
		ArtifactHash: hex.EncodeToString(sum[:]), PublisherName: *publisher, Pattern: m.Pattern, Subscriptions: m.Subscriptions}
	if lockfile != "" {
		env := sha256.Sum256([]byte(lockfile))
		d.EnvHash = hex.EncodeToString(env[:])
	}
	for _, k := range m.Sinks {
		d.Sinks = append(d.Sinks, protocol.DeploySink{Topic: k.Topic, URI: k.URI})
	}
	keyPath := *keyFlag
	if keyPath == "" {
		dir, err := signing.DefaultDir()
		if err != nil {
			return fail("%v", err)
		}
		keyPath = filepath.Join(dir, signing.PrivateFile)
	}
	priv, err := signing.LoadPrivate(keyPath)
	if err != nil {
		return fail("%v", err)
	}
	signing.Sign(priv, &d)
	pub, _ := signing.ParsePublic(d.PublicKey)
	fmt.Fprintf(stdout, "plugin %s %s (%s) from %s\n  artifact sha256 %s\n  signed by %s as %s\n", m.Name, m.Version, m.Kind,
		m.Artifact, m.SHA256, signing.Fingerprint(pub), d.PublisherName)
	if m.Pattern != "" {
		fmt.Fprintf(stdout, "  files matching %s are tagged auto_%s\n", m.Pattern, m.Name)
	}
	if len(m.Subscriptions) > 0 {
		fmt.Fprintf(stdout, "  subscribes to %s\n", strings.Join(m.Subscriptions, ", "))
	}
	for _, k := range m.Sinks {
		fmt.Fprintf(stdout, "  topic %s -> %s\n", k.Topic, k.URI)
	}
	if lockfile != "" {
		fmt.Fprintf(stdout, "  requirements %s (env %s)\n", strings.Join(m.Requirements, ", "), d.EnvHash[:12])
	}
	if *dryRun {
		fmt.Fprintln(stdout, "dry run: nothing sent")
		return 0
	}
	secret, tlsCfg, err := sec.client()
	if err != nil {
		return fail("%v", err)
	}
	msg, err := deploy(ctx, *connect, d, *timeout, *publisher, secret, tlsCfg)
	if err != nil {
		return fail("%v", err)
	}
	fmt.Fprintln(stdout, msg)
	return 0
}

// deploy sends d to the sentinel at endpoint and waits for its ACK or ERR.
func deploy(ctx context.Context, endpoint string, d protocol.DeployCommand, timeout time.Duration,
	user string, secret []byte, tlsCfg *tls.Config) (string, error) {
	if err := transport.Register(transport.DefaultLimits()); err != nil {
		return "", err
	}
	if tlsCfg != nil {
		transport.SetClientTLS(tlsCfg)
	}
	ep, err := transport.Endpoint(endpoint)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sock := zmq4.NewDealer(ctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(5*time.Second),
		zmq4.WithLogger(log.New(io.Discard, "", 0)), transport.ClientSecurity(user, secret))
	defer sock.Close()
	if err := sock.Dial(ep); err != nil {
		if e := transport.ExplainDialError(err); e != err {
			return "", fmt.Errorf("the sentinel at %s refused this publisher: %v", endpoint, e)
		}
		return "", fmt.Errorf("cannot reach the sentinel at %s: %v (is it running? --connect sets the endpoint)", endpoint, err)
	}
	m, err := protocol.NewMessage(protocol.OpDeploy, 0, d)
	if err != nil {
		return "", err
	}
	frames, err := protocol.Encode(m)
	if err != nil {
		return "", err
	}
	if err := sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		return "", fmt.Errorf("send to %s: %v", endpoint, err)
	}
	for {
		in, err := sock.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return "", fmt.Errorf("no answer from the sentinel at %s within %s (is it running?)", endpoint, timeout)
			}
			return "", fmt.Errorf("receive from %s: %v", endpoint, err)
		}
		reply, err := protocol.Decode(in.Frames)
		if err != nil {
			return "", fmt.Errorf("the sentinel's answer is malformed: %v", err)
		}
		switch reply.OpCode {
		case protocol.OpAck:
			var a protocol.DeployResponse
			if err := reply.Unmarshal(&a); err != nil {
				return "", err
			}
			if !a.Success {
				return "", fmt.Errorf("refused: %s", a.Message)
			}
			return a.Message, nil
		case protocol.OpErr:
			var e protocol.ErrorPayload
			if err := reply.Unmarshal(&e); err != nil {
				return "", err
			}
			return "", errors.New("refused by the sentinel: " + e.Message)
		}
		// Anything else (a probe) is not for us.
	}
}
