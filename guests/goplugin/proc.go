package goplugin

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	"github.com/casparianflow/casparian/internal/sandbox"
	sdkgp "github.com/casparianflow/casparian/sdk/goplugin"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// proc is one plugin process: started by acquire, used by one job at a
// time, idle in the pool between jobs, stopped once.
type proc struct {
	rt   *Runtime
	key  string // artifact hash
	name string
	run  *procRunner
	tail *guestlog.Tail
	// crashLine is the first "panic: " or "fatal error: " line on stderr.
	crashLine atomic.Pointer[string]

	// Set by start.
	dir      string
	sb       *sandbox.Guest // nil: not sandboxed
	client   *plugin.Client
	rpc      pluginpb.PluginClient
	topics   map[string]*arrow.Schema // declared topics (nil schema: any)
	declared bool
	started  time.Time

	// Owned by whoever holds the process (or under rt.mu while idle).
	jobs      int
	idleSince time.Time
	timer     *time.Timer

	sinkMu sync.RWMutex
	sink   guest.Output // the running job's output; nil between jobs

	noSync   bool // the process does not write sync lines (owner only)
	syncMu   sync.Mutex
	syncLine string           // the running job's sync line (see ProcessRequest.sync_line)
	syncSeen [2]chan struct{} // closed when it came on stdout, on stderr

	closing  atomic.Bool // Runtime.Close killed it
	stopOnce sync.Once
	gone     chan struct{} // closed when the process and everything it held are gone
}

func newProc(r *Runtime, inst *instance) *proc {
	p := &proc{rt: r, key: inst.plugin.Hash, name: inst.name, tail: guestlog.NewTail(r.cfg.StderrTail), gone: make(chan struct{})}
	want, _ := hex.DecodeString(inst.plugin.Hash)
	p.run = newRunner(p, inst.path, want, r.spawn)
	return p
}

// start starts the process and connects to it: go-plugin's handshake, the
// TLS connection and the Info call, all within StartTimeout. ctx cancels it.
func (p *proc) start(ctx context.Context) error {
	r := p.rt
	cfg := r.cfg
	dir, err := os.MkdirTemp(r.dir, "p-")
	if err != nil {
		return guest.AsError(fmt.Errorf("goplugin guest: process dir: %w", err), guest.ErrResourceLimit)
	}
	p.dir = dir
	p.started = time.Now()
	if !cfg.NoSandbox {
		// The process's private dir is its scratch directory: the only
		// place it may write (go-plugin's socket is made there too).
		if p.sb, err = sandbox.New(cfg.Sandbox, dir, r.log); err != nil {
			return guest.AsError(fmt.Errorf("goplugin guest: %w", err), guest.ErrResourceLimit)
		}
	}
	env := make([]string, 0, len(envAllowList)+len(cfg.Env)+8)
	for _, k := range envAllowList {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "TMPDIR="+dir, sdkgp.EnvHost+"=1")

	p.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: sdkgp.Handshake,
		Plugins:         plugin.PluginSet{sdkgp.PluginName: &sdkgp.GRPCPlugin{}},
		RunnerFunc: func(_ hclog.Logger, cmd *exec.Cmd, _ string) (runner.Runner, error) {
			p.run.mu.Lock()
			p.run.dir = dir
			// go-plugin's entries (cookie, versions, socket dir, client
			// certificate) after ours; the configured extras last.
			p.run.env = append(append(env, cmd.Env...), cfg.Env...)
			p.run.mu.Unlock()
			return p.run, nil
		},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		StartTimeout:     cfg.StartTimeout,
		SkipHostEnv:      true,
		Logger:           r.hclogger(p.name),
		SyncStdout:       &guestlog.Writer{Emit: p.stdoutLine},
		SyncStderr:       &guestlog.Writer{Emit: p.stderrLine},
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: dir},
		// Windows of a few chunks let the plugin serialize its next batch
		// while the host sinks the last one.
		GRPCDialOptions: []grpc.DialOption{grpc.WithInitialWindowSize(8 << 20), grpc.WithInitialConnWindowSize(16 << 20)},
	})

	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	stop := context.AfterFunc(sctx, p.run.kill)
	var info *pluginpb.InfoResponse
	cp, err := p.client.Client()
	if err == nil {
		var raw any
		if raw, err = cp.Dispense(sdkgp.PluginName); err == nil {
			p.rpc = raw.(pluginpb.PluginClient)
			info, err = p.rpc.Info(sctx, &pluginpb.InfoRequest{}, grpc.MaxCallRecvMsgSize(maxMessage))
		}
	}
	if !stop() && err == nil {
		err = sctx.Err() // killed just after it answered
	}
	if err != nil {
		return p.startError(ctx, sctx, err)
	}
	if err := p.loadInfo(info); err != nil {
		return err
	}
	r.log.Debug("go plugin process started", "plugin", p.name, "pid", p.run.pidNow(), "cgroup", p.sb.Cgroup(),
		"plugin_name", info.GetName(), "plugin_version", info.GetVersion(), "sdk", info.GetSdkVersion(),
		"duration", time.Since(p.started).Round(time.Microsecond))
	return nil
}

// startError explains why a start failed.
func (p *proc) startError(ctx, sctx context.Context, err error) *guest.Error {
	cfg := p.rt.cfg
	p.run.mu.Lock()
	pre := p.run.preErr
	p.run.mu.Unlock()
	if pre != nil {
		return pre
	}
	if p.closing.Load() {
		return guest.Errorf(guest.ErrCancelled, "goplugin guest closed while plugin %q was starting", p.name)
	}
	if ctx.Err() != nil {
		p.run.waitExit(time.Second)
		return ctxError(ctx, "while the plugin was starting")
	}
	line, complete := p.run.stdout()
	if complete {
		core, app, proto, ok := parseHandshake(line)
		switch {
		case !ok:
			return p.withStderr(&guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
				Message: fmt.Sprintf("plugin %q wrote to stdout before the go-plugin handshake: %q", p.name, guestlog.Truncate(line, 200)),
				Hint:    "stdout belongs to go-plugin until serve.Main has started: remove prints from init() and main() before serve.Main, and log with out.Logger() or to stderr"})
		case core != plugin.CoreProtocolVersion || app != sdkgp.ProtocolVersion || proto != string(plugin.ProtocolGRPC):
			return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
				Message: fmt.Sprintf("plugin %q speaks go-plugin core protocol %d, app protocol %d over %q; this host speaks %d, %d over \"grpc\"",
					p.name, core, app, proto, plugin.CoreProtocolVersion, sdkgp.ProtocolVersion),
				Hint: "rebuild the plugin against this version of the Casparian SDK (sdk/serve)"}
		}
	}
	// gRPC sends the deadline to the plugin, whose server may cancel the
	// call a moment before the local context's timer fires.
	if errors.Is(sctx.Err(), context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		msg := fmt.Sprintf("plugin %q did not complete the go-plugin handshake within %s", p.name, cfg.StartTimeout)
		hint := "the plugin may be stuck in init() or main() before serve.Main, or write to stdout before it; raise StartTimeout if it legitimately starts slowly"
		if complete {
			msg = fmt.Sprintf("plugin %q did not answer within %s of its handshake", p.name, cfg.StartTimeout)
			hint = "the plugin's Info() may be stuck, or the machine overloaded; raise StartTimeout if it legitimately starts slowly"
		} else if line != "" {
			msg += fmt.Sprintf("; it wrote %q to stdout without a newline", guestlog.Truncate(line, 200))
		}
		return p.withStderr(&guest.Error{Kind: guest.ErrTimeout, ExitCode: -1, Message: msg, Hint: hint})
	}
	if p.run.waitExit(200 * time.Millisecond) {
		e := p.exitError("plugin process exited before it was ready")
		if e.Hint == "" || strings.HasPrefix(e.Hint, "the last stderr") {
			e.Hint = "check that the file is a Casparian Go plugin (its main calls serve.Main) and see its last stderr lines"
		}
		return e
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unimplemented {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q does not serve the Casparian plugin service: %s", p.name, st.Message()),
			Hint:    "build the plugin with the Casparian SDK (its main calls serve.Main)"}
	}
	return p.withStderr(&guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
		Message: fmt.Sprintf("plugin %q failed to start: %v", p.name, err)})
}

// parseHandshake parses go-plugin's handshake line
// CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT.
func parseHandshake(line string) (core, app int, proto string, ok bool) {
	parts := strings.Split(strings.TrimSpace(line), "|")
	if len(parts) < 4 {
		return 0, 0, "", false
	}
	var err1, err2 error
	core, err1 = strconv.Atoi(parts[0])
	app, err2 = strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || (parts[2] != "unix" && parts[2] != "tcp") {
		return 0, 0, "", false
	}
	proto = string(plugin.ProtocolNetRPC)
	if len(parts) >= 5 {
		proto = parts[4]
	}
	return core, app, proto, true
}

// loadInfo checks the plugin's declared topics and decodes their schemas.
func (p *proc) loadInfo(info *pluginpb.InfoResponse) error {
	p.topics = map[string]*arrow.Schema{}
	for _, t := range info.GetTopics() {
		if err := bridge.ValidateTopic(t.GetName()); err != nil {
			return &guest.Error{Kind: guest.ErrSchema, ExitCode: -1, Message: fmt.Sprintf("plugin %q declares an invalid topic: %v", p.name, err)}
		}
		var schema *arrow.Schema
		if b := t.GetSchema(); len(b) > 0 {
			_, err := bridge.ReadIPC(bytes.NewReader(b), int64(len(b)), p.rt.cfg.Allocator, func(rec arrow.RecordBatch) error {
				schema = rec.Schema()
				return nil
			})
			if err == nil && schema == nil {
				err = errors.New("no record batch")
			}
			if err != nil {
				return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
					Message: fmt.Sprintf("plugin %q: the schema of topic %q: %v", p.name, t.GetName(), err)}
			}
		}
		p.topics[t.GetName()] = schema
	}
	p.declared = len(p.topics) > 0
	return nil
}

// kill stops the process at once (SIGKILL to its group) and releases
// everything it held; retire first asks it to exit (go-plugin's shutdown
// call, then stdin EOF) and kills it after KillGrace. Both are idempotent
// and return when the process is gone.
func (p *proc) kill()   { p.stop(false) }
func (p *proc) retire() { p.stop(true) }

func (p *proc) stop(graceful bool) {
	p.stopOnce.Do(func() {
		defer close(p.gone)
		defer p.rt.forget(p)
		if !graceful {
			p.run.kill()
		}
		if p.client != nil {
			// go-plugin's Kill: shutdown call, up to 2 s for the exit, then
			// runner.Kill; it returns when its goroutines are done, which
			// needs the process gone. KillGrace bounds a hung shutdown call.
			t := time.AfterFunc(p.rt.cfg.KillGrace, p.run.kill)
			p.client.Kill()
			t.Stop()
		}
		p.run.closeStdin()
		if p.run.isStarted() {
			if !p.run.waitExit(p.rt.cfg.KillGrace) {
				p.run.kill()
				<-p.run.exited
			}
			// Whatever the plugin started in its group goes too. (The group
			// outlives the leader while a member lives, so its id is not reused.)
			_ = unix.Kill(-p.run.pidNow(), unix.SIGKILL)
		}
		// And whatever it started outside its group dies with its cgroup.
		if err := p.sb.Close(); err != nil {
			p.rt.log.Warn("goplugin guest: cleaning up the plugin's cgroup", "plugin", p.name, "error", err)
		}
		if p.run.isStarted() {
			<-p.run.drained
		}
		p.run.releasePipes()
		if p.dir != "" {
			_ = os.RemoveAll(p.dir)
		}
		if p.run.isStarted() {
			p.rt.log.Debug("go plugin process ended", "plugin", p.name, "pid", p.run.pidNow(), "jobs", p.jobs,
				"state", p.run.state.String(), "graceful", graceful, "lifetime", time.Since(p.started).Round(time.Millisecond))
		}
	})
	<-p.gone
}

// setSink routes the process's output lines to a job's Output (nil: to the
// runtime's logger). No line reaches an Output after setSink(nil) returns.
func (p *proc) setSink(out guest.Output) {
	p.sinkMu.Lock()
	p.sink = out
	p.sinkMu.Unlock()
}

func (p *proc) emitLog(rec guest.LogRecord) {
	p.sinkMu.RLock()
	defer p.sinkMu.RUnlock()
	if p.sink != nil {
		p.sink.Log(rec)
		return
	}
	args := []any{"plugin", p.name, "pid", p.run.pidNow(), "stream", rec.Stream}
	for _, a := range rec.Attrs {
		args = append(args, a)
	}
	p.rt.log.Log(context.Background(), min(rec.Level, slog.LevelDebug), "plugin output between jobs: "+rec.Message, args...)
}

// beginSync returns a fresh sync line for a job.
func (p *proc) beginSync() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	p.syncLine = "casparian-sync " + hex.EncodeToString(b[:])
	p.syncSeen = [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	return p.syncLine
}

// isSync reports (and records) the job's sync line on stream i (0 stdout, 1 stderr).
func (p *proc) isSync(i int, line string) bool {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	if p.syncLine == "" || line != p.syncLine {
		return false
	}
	select {
	case <-p.syncSeen[i]:
	default:
		close(p.syncSeen[i])
	}
	return true
}

// waitSync waits, up to d, until the sync line came on stdout and stderr:
// then every line the plugin wrote during the job has been forwarded. It
// reports false if the line did not come in time.
func (p *proc) waitSync(d time.Duration) bool {
	p.syncMu.Lock()
	seen := p.syncSeen
	p.syncMu.Unlock()
	if seen[0] == nil || !p.run.isStarted() {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for _, ch := range seen {
		select {
		case <-ch:
		case <-p.run.exited:
			return true
		case <-t.C:
			p.rt.log.Debug("go plugin: sync line not seen on stdout and stderr", "plugin", p.name, "pid", p.run.pidNow())
			return false
		}
	}
	return true
}

func (p *proc) endSync() {
	p.syncMu.Lock()
	p.syncLine, p.syncSeen = "", [2]chan struct{}{}
	p.syncMu.Unlock()
}

func (p *proc) stdoutLine(line string) {
	if p.isSync(0, line) {
		return
	}
	p.emitLog(guest.LogRecord{Level: slog.LevelInfo, Message: line, Stream: "stdout"})
}

func (p *proc) stderrLine(line string) {
	if p.isSync(1, line) {
		return
	}
	p.tail.Add(line)
	if p.crashLine.Load() == nil && (strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")) {
		l := line
		p.crashLine.Store(&l) // the start of a Go crash dump; its tail is all goroutine stacks
	}
	if rec, ok := parseHclog(line); ok {
		p.emitLog(rec)
		return
	}
	p.emitLog(guest.LogRecord{Level: slog.LevelWarn, Message: line, Stream: "stderr"})
}

// exitError describes how the process ended, with its last stderr lines.
func (p *proc) exitError(what string) *guest.Error {
	e := &guest.Error{Kind: guest.ErrCrashed, ExitCode: -1}
	st := p.run.state // read after exited
	if st != nil {
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
			e.Message = fmt.Sprintf("%s: killed by signal %s", what, unix.SignalName(ws.Signal()))
		} else {
			e.ExitCode = st.ExitCode()
			e.Message = fmt.Sprintf("%s: exit status %d", what, e.ExitCode)
		}
	} else {
		e.Message = what
	}
	p.withStderr(e)
	if c := p.crashLine.Load(); c != nil {
		e.Message += ": " + *c
	}
	cpuLimit := time.Duration(p.rt.cfg.limits().CPUSeconds) * time.Second
	switch {
	case cpuLimit > 0 && st != nil && e.Signal != "" && st.UserTime()+st.SystemTime() >= cpuLimit-100*time.Millisecond:
		// The Go runtime ignores SIGXCPU; the kernel's SIGKILL at the hard
		// limit follows. The CPU time used tells why.
		e.Kind = guest.ErrResourceLimit
		e.Message += fmt.Sprintf(" after %s of CPU time (limit %s)", (st.UserTime() + st.SystemTime()).Round(10*time.Millisecond), cpuLimit)
		e.Hint = "the plugin used up its CPU time limit (goplugin ProcessLimits.CPUSeconds): it may be stuck in a loop"
	case strings.Contains(e.Message, "out of memory"):
		e.Kind = guest.ErrResourceLimit
		e.Hint = "the plugin ran out of memory: its process's address space is capped (goplugin ProcessLimits.AddressSpace); hold less in memory, or raise the limit"
	case p.crashLine.Load() != nil || strings.Contains(e.Stderr, "panic: ") || strings.Contains(e.Stderr, "fatal error: "):
		e.Hint = "the plugin panicked outside Process (in a goroutine of its own, or at start): the stack is in the stderr lines above"
	default:
		e.Hint = "the last stderr lines above show why the process ended"
	}
	return e
}

func (p *proc) withStderr(e *guest.Error) *guest.Error {
	if e.Stderr == "" {
		if p.run.isStarted() {
			// Let the last lines in flight arrive (a grandchild may hold the pipes, so not forever).
			t := time.NewTimer(500 * time.Millisecond)
			select {
			case <-p.run.drained:
			case <-t.C:
			}
			t.Stop()
		}
		e.Stderr = p.tail.String()
	}
	return e
}

// limitError turns the error of a job whose process hit its cap of
// processes and threads (a fork or a thread refused by pids.max) into a
// RESOURCE_LIMIT that says so.
func (p *proc) limitError(err error) error {
	var ge *guest.Error
	if err == nil || !errors.As(err, &ge) || ge.Kind == guest.ErrCancelled || ge.Kind == guest.ErrSink {
		return err
	}
	ge.Kind = guest.ErrResourceLimit
	ge.Hint = fmt.Sprintf("the plugin reached its cap of %d processes and threads (goplugin Sandbox.MaxProcesses), "+
		"so starting one more failed: a fork bomb, or far too many subprocesses; every process it started has been killed", p.sb.MaxProcesses())
	return ge
}

// hclogger adapts go-plugin's own diagnostics to the runtime's logger.
func (r *Runtime) hclogger(name string) hclog.Logger {
	if !r.log.Enabled(context.Background(), slog.LevelDebug) {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Name: "go-plugin", Level: hclog.Debug, JSONFormat: true,
		Output: &guestlog.Writer{Emit: func(line string) {
			rec, ok := parseHclog(line)
			if !ok {
				rec = guest.LogRecord{Message: line}
			}
			args := []any{"plugin", name}
			for _, a := range rec.Attrs {
				args = append(args, a)
			}
			r.log.Debug(rec.Message, args...)
		}}})
}
