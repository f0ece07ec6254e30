// Package python is the Python guest: it runs each job in its own Python
// process (the shim of the casparian_flow SDK) and reads the Arrow record
// batches the plugin publishes over a private Unix socket, as specified in
// docs/BRIDGE.md.
package python

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/sys/unix"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	"github.com/casparianflow/casparian/internal/rlimit"
	"github.com/casparianflow/casparian/internal/sandbox"
	pysdk "github.com/casparianflow/casparian/sdk/python"
)

// Bootstrap is the program passed to `python -I -c`: it puts the SDK shipped
// with the host first on sys.path and runs the shim. argv: SDK_DIR JOB_JSON.
const Bootstrap = "import sys; sys.path.insert(0, sys.argv[1]); from casparian_flow.bridge_shim import main; sys.exit(main(sys.argv[2]))"

// Defaults for Config's zero values.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultIdleTimeout    = 60 * time.Second
	DefaultKillGrace      = 5 * time.Second
	DefaultExitTimeout    = 10 * time.Second
	DefaultMaxBatchBytes  = 16 << 20
	DefaultStderrTail     = 20
)

// envAllowList is what the guest inherits from the host's environment.
var envAllowList = []string{"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"}

// Config configures the Python guest. Every zero value means the default.
type Config struct {
	// Python is the interpreter to run. Default: "python3" found on PATH.
	Python string
	// ConnectTimeout bounds the time from start to the shim's connection. Default 30 s.
	ConnectTimeout time.Duration
	// IdleTimeout bounds the time between two reads on the socket. Default 60 s.
	IdleTimeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL on cancellation. Default 5 s.
	// A plugin still running at its job's deadline gets none: it is killed at once.
	KillGrace time.Duration
	// ExitTimeout bounds the wait for the process to exit after END or ERROR. Default 10 s.
	ExitTimeout time.Duration
	// Limits caps frame sizes (defaults of the bridge package).
	Limits bridge.Limits
	// MaxBatchBytes is the SDK's target size of one BATCH frame. Default 16 MiB:
	// big tables arrive as several frames, so decoding one overlaps sinking the last.
	MaxBatchBytes int64
	// Env adds KEY=VALUE entries to the guest's reduced environment.
	Env []string
	// TempDir is where private job directories are made. Default os.TempDir().
	// Unix socket paths are limited to 107 bytes, so keep it short.
	TempDir string
	// StderrTail is how many stderr lines an error quotes. Default 20.
	StderrTail int
	// Allocator allocates decoded Arrow data. Default memory.DefaultAllocator.
	Allocator memory.Allocator
	// ProcessLimits are the resource limits of every plugin process
	// (address space, open files, processes, CPU time, file size). The zero
	// value means rlimit.Defaults(); NoProcessLimits leaves the inherited ones.
	ProcessLimits   rlimit.Limits
	NoProcessLimits bool
	// Sandbox confines every plugin process (see internal/sandbox): its
	// own pids cgroup capping its processes and threads (Sandbox.MaxProcesses,
	// default 512; whatever is left when the job ends is killed), and
	// Landlock: it reads anywhere but writes only under its job's scratch
	// directory (its working directory and TMPDIR, removed after the job;
	// plus Sandbox.Writable), and cannot bind or connect TCP sockets unless
	// Sandbox.AllowNetwork. NoSandbox starts plugin processes directly,
	// with the resource limits only.
	Sandbox   sandbox.Options
	NoSandbox bool
	// Logger receives the runtime's own diagnostics (process start and end at
	// debug level). Plugin output goes to the guest.Output instead. nil
	// discards them.
	Logger *slog.Logger
}

// Runtime runs Python plugins. It is safe for concurrent use.
type Runtime struct {
	cfg    Config
	sdkDir string

	mu     sync.Mutex
	closed bool
}

var _ guest.Runtime = (*Runtime)(nil)

// limits returns the resource limits of a plugin process.
func (c Config) limits() rlimit.Limits { return c.ProcessLimits.Effective(c.NoProcessLimits) }

// New checks the configuration, finds the interpreter and extracts the SDK.
func New(cfg Config) (*Runtime, error) {
	if cfg.Python == "" {
		cfg.Python = "python3"
	}
	py, err := exec.LookPath(cfg.Python)
	if err != nil {
		return nil, fmt.Errorf("python guest: interpreter %q not found: %w (install Python 3.10+ with pyarrow, or pass its path)", cfg.Python, err)
	}
	if abs, err := filepath.Abs(py); err == nil {
		py = abs
	}
	cfg.Python = py
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.ExitTimeout <= 0 {
		cfg.ExitTimeout = DefaultExitTimeout
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.StderrTail <= 0 {
		cfg.StderrTail = DefaultStderrTail
	}
	if cfg.TempDir == "" {
		cfg.TempDir = os.TempDir()
	}
	if cfg.Allocator == nil {
		cfg.Allocator = memory.DefaultAllocator
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, kv := range cfg.Env {
		if !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("python guest: env entry %q is not KEY=VALUE", kv)
		}
	}
	dir, err := os.MkdirTemp(cfg.TempDir, "cf-sdk-")
	if err != nil {
		return nil, fmt.Errorf("python guest: %w", err)
	}
	if _, err := pysdk.Extract(dir); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("python guest: extract SDK: %w", err)
	}
	if !cfg.NoSandbox {
		precompile(cfg, dir)
	}
	return &Runtime{cfg: cfg, sdkDir: dir}, nil
}

// precompile writes the SDK's bytecode once: sandboxed plugins cannot write
// __pycache__ next to it, and would otherwise compile it in every job.
// Best effort: a failure only costs that time.
func precompile(cfg Config, sdkDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cfg.Python, "-I", "-m", "compileall", "-q", sdkDir)
	cmd.Env = guestEnv(sdkDir, cfg.Env)
	if out, err := cmd.CombinedOutput(); err != nil {
		cfg.Logger.Debug("python guest: precompiling the SDK failed", "error", err, "output", guestlog.Truncate(string(out), 500))
	}
}

// Kind reports guest.KindPython.
func (r *Runtime) Kind() guest.Kind { return guest.KindPython }

// Interpreter returns the absolute path of the Python interpreter in use.
func (r *Runtime) Interpreter() string { return r.cfg.Python }

// Close removes the extracted SDK. It is idempotent.
func (r *Runtime) Close(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return os.RemoveAll(r.sdkDir)
}

// Load reads the plugin's source (from p.Source or p.Path) and returns an
// instance that runs it. Nothing is started until Run.
func (r *Runtime) Load(_ context.Context, p guest.Plugin) (guest.Instance, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, guest.Errorf(guest.ErrPlugin, "python guest is closed")
	}
	src := p.Source
	if src == nil {
		if p.Path == "" {
			return nil, guest.Errorf(guest.ErrPlugin, "plugin %q has neither a path nor source", p.Name)
		}
		b, err := os.ReadFile(p.Path)
		if err != nil {
			e := guest.AsError(err, guest.ErrPlugin)
			e.Message = fmt.Sprintf("read plugin %s: %v", p.Path, err)
			e.Hint = "check the --plugin path"
			return nil, e
		}
		src = b
	}
	if p.Hash == "" {
		sum := sha256.Sum256(src)
		p.Hash = hex.EncodeToString(sum[:])
	}
	name := p.Name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(p.Path), filepath.Ext(p.Path))
	}
	inst := &instance{rt: r, plugin: p, name: name, source: src}
	if p.Source == nil {
		if abs, err := filepath.Abs(p.Path); err == nil {
			inst.path = abs
		}
	}
	return inst, nil
}

type instance struct {
	rt     *Runtime
	plugin guest.Plugin
	name   string
	source []byte // the plugin's source, read at Load
	path   string // absolute path of the plugin file; "" for inline source
}

var (
	_ guest.Instance   = (*instance)(nil)
	_ guest.Concurrent = (*instance)(nil)
)

// Concurrent is true: every Run has its own process.
func (i *instance) Concurrent() bool { return true }

// Close does nothing: the instance holds no process between runs.
func (i *instance) Close(context.Context) error { return nil }

type jobSpec struct {
	Socket        string         `json:"socket"`
	PluginPath    string         `json:"plugin_path"`
	PluginName    string         `json:"plugin_name"`
	InputPath     string         `json:"input_path"`
	JobID         int64          `json:"job_id"`
	FileVersionID int64          `json:"file_version_id"`
	Config        map[string]any `json:"config"`
	MaxBatchBytes int64          `json:"max_batch_bytes"`
	MaxFrameBytes int64          `json:"max_frame_bytes"`
}

// Run starts the shim, streams the plugin's batches to out and cleans up.
func (i *instance) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	cfg := i.rt.cfg
	dir, err := os.MkdirTemp(cfg.TempDir, "cf-job-")
	if err != nil {
		return guest.AsError(fmt.Errorf("python guest: private dir: %w", err), guest.ErrResourceLimit)
	}
	defer os.RemoveAll(dir)

	sock := filepath.Join(dir, "bridge.sock")
	if len(sock) > 107 {
		return guest.Errorf(guest.ErrResourceLimit, "socket path %q is longer than the 107 bytes Unix sockets allow; use a shorter temp dir", sock)
	}
	// A plugin loaded from a file runs from that file, so tracebacks name it;
	// inline source (from a DISPATCH) is written into the private dir.
	pluginPath := i.path
	if pluginPath == "" {
		pluginPath = filepath.Join(dir, "plugin.py")
		if err := os.WriteFile(pluginPath, i.source, 0o600); err != nil {
			return guest.AsError(fmt.Errorf("python guest: write plugin: %w", err), guest.ErrResourceLimit)
		}
	}
	inputPath := in.Path
	if abs, err := filepath.Abs(inputPath); err == nil {
		inputPath = abs
	}
	spec := jobSpec{
		Socket: sock, PluginPath: pluginPath, PluginName: i.name, InputPath: inputPath,
		JobID: in.JobID, FileVersionID: in.FileVersionID, Config: in.Config,
		MaxBatchBytes: cfg.MaxBatchBytes, MaxFrameBytes: int64(cfg.Limits.WithDefaults().MaxBatchFrame),
	}
	if spec.Config == nil {
		spec.Config = map[string]any{}
	}
	specPath := filepath.Join(dir, "job.json")
	specBytes, err := json.Marshal(spec)
	if err != nil {
		return guest.AsError(fmt.Errorf("python guest: job spec: %w", err), guest.ErrPlugin)
	}
	if err := os.WriteFile(specPath, specBytes, 0o600); err != nil {
		return guest.AsError(fmt.Errorf("python guest: write job spec: %w", err), guest.ErrResourceLimit)
	}

	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return guest.AsError(fmt.Errorf("python guest: listen on %s: %w", sock, err), guest.ErrResourceLimit)
	}
	ln.SetUnlinkOnClose(true)
	defer ln.Close()

	if i.plugin.Interpreter != "" {
		cfg.Python = i.plugin.Interpreter // the plugin's own environment
	}
	p := &proc{cfg: cfg, limits: cfg.limits(), sdkDir: i.rt.sdkDir, out: out, tail: guestlog.NewTail(cfg.StderrTail),
		log: cfg.Logger.With("job_id", in.JobID, "plugin", i.name, "guest", string(guest.KindPython))}
	if !cfg.NoSandbox {
		// The job's directory is the plugin's scratch directory: the only
		// place it may write.
		if p.sb, err = sandbox.New(cfg.Sandbox, dir, cfg.Logger); err != nil {
			return guest.AsError(fmt.Errorf("python guest: %w", err), guest.ErrResourceLimit)
		}
		defer p.closeSandbox()
	}
	if err := p.start(dir, specPath); err != nil {
		return err
	}
	defer func() { p.cleanup(errors.Is(ctx.Err(), context.DeadlineExceeded)) }()

	conn, err := p.accept(ctx, ln)
	if err != nil {
		return p.limitError(err)
	}
	defer conn.Close()
	ln.Close()

	return p.limitError(p.session(ctx, conn, in, out))
}

// limitError turns the error of a job whose plugin hit its process cap
// (a fork or a thread refused by pids.max) into a RESOURCE_LIMIT that says so.
func (p *proc) limitError(err error) error {
	if err == nil || p.sb.ForkFailures() == 0 {
		return err
	}
	var ge *guest.Error
	if !errors.As(err, &ge) || ge.Kind == guest.ErrCancelled || ge.Kind == guest.ErrSink {
		return err
	}
	ge.Kind = guest.ErrResourceLimit
	ge.Hint = fmt.Sprintf("the plugin reached its cap of %d processes and threads (python guest Sandbox.MaxProcesses), "+
		"so starting one more failed: a fork bomb, or a pool far too large; every process it started has been killed", p.sb.MaxProcesses())
	return ge
}

// closeSandbox kills whatever is left in the plugin's cgroup and removes it.
func (p *proc) closeSandbox() {
	if err := p.sb.Close(); err != nil {
		p.log.Warn("python guest: cleaning up the plugin's cgroup", "error", err)
	}
}

// proc is one running shim process.
type proc struct {
	cfg     Config
	limits  rlimit.Limits
	sb      *sandbox.Guest // nil: not sandboxed
	log     *slog.Logger
	sdkDir  string
	out     guest.Output
	tail    *guestlog.Tail
	cmd     *exec.Cmd
	pipes   []*os.File    // read ends of stdout and stderr
	exited  chan struct{} // closed when the process has been reaped
	drained chan struct{} // closed when stdout and stderr hit EOF
	state   *os.ProcessState
	started time.Time
}

func (p *proc) start(dir, specPath string) error {
	cmd := exec.Command(p.cfg.Python, "-I", "-c", Bootstrap, p.sdkDir, specPath)
	cmd.Dir = dir
	cmd.Env = guestEnv(dir, p.cfg.Env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Our own pipes, not exec's copying goroutines: the process is reaped as
	// soon as it exits, even while a grandchild still holds the pipes.
	outR, outW, err := os.Pipe()
	if err != nil {
		return guest.AsError(fmt.Errorf("python guest: pipe: %w", err), guest.ErrResourceLimit)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return guest.AsError(fmt.Errorf("python guest: pipe: %w", err), guest.ErrResourceLimit)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	wrapped, err := p.sb.Wrap(cmd, p.limits)
	if err == nil {
		err = cmd.Start()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return &guest.Error{Kind: guest.ErrCrashed, Message: fmt.Sprintf("start %s: %v", p.cfg.Python, err),
			ExitCode: -1, Err: err, Hint: "check that the Python interpreter exists and is executable"}
	}
	// The interpreter is still starting: the limits hold before any plugin
	// code runs. (The sandbox wrapper sets them itself, before the exec.)
	if !wrapped {
		if err := p.limits.Apply(cmd.Process.Pid); err != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_, _ = cmd.Process.Wait()
			outR.Close()
			errR.Close()
			return guest.AsError(fmt.Errorf("python guest: %w", err), guest.ErrResourceLimit)
		}
	}
	p.cmd = cmd
	p.started = time.Now()
	p.log.Debug("guest process started", "pid", cmd.Process.Pid, "python", p.cfg.Python, "cgroup", p.sb.Cgroup())
	p.pipes = []*os.File{outR, errR}
	p.exited = make(chan struct{})
	p.drained = make(chan struct{})
	stdout := &guestlog.Writer{Emit: func(line string) {
		p.out.Log(guest.LogRecord{Level: slog.LevelInfo, Message: line, Stream: "stdout"})
	}}
	stderr := &guestlog.Writer{Emit: func(line string) {
		p.tail.Add(line)
		p.out.Log(guest.LogRecord{Level: slog.LevelWarn, Message: line, Stream: "stderr"})
	}}
	var drain sync.WaitGroup
	for i, w := range []*guestlog.Writer{stdout, stderr} {
		drain.Add(1)
		go func(r *os.File, w *guestlog.Writer) {
			defer drain.Done()
			_, _ = io.Copy(w, r)
			w.Close()
		}(p.pipes[i], w)
	}
	go func() {
		drain.Wait()
		close(p.drained)
	}()
	go func() {
		st, _ := cmd.Process.Wait()
		p.state = st
		close(p.exited)
	}()
	return nil
}

func guestEnv(dir string, extra []string) []string {
	env := make([]string, 0, len(envAllowList)+len(extra)+1)
	for _, k := range envAllowList {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "TMPDIR="+dir)
	return append(env, extra...)
}

// accept waits for the shim's connection, the child's early exit, or ctx.
func (p *proc) accept(ctx context.Context, ln *net.UnixListener) (*net.UnixConn, error) {
	type result struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan result, 1)
	_ = ln.SetDeadline(time.Now().Add(p.cfg.ConnectTimeout))
	go func() {
		c, err := ln.AcceptUnix()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			var ne net.Error
			if errors.As(r.err, &ne) && ne.Timeout() {
				return nil, p.withStderr(&guest.Error{Kind: guest.ErrTimeout, ExitCode: -1,
					Message: fmt.Sprintf("guest process did not connect to the bridge socket within %s", p.cfg.ConnectTimeout),
					Hint:    "the Python process may be stuck importing modules or at the top level of the plugin; check the log lines above, or raise the connect timeout"})
			}
			return nil, guest.AsError(fmt.Errorf("accept: %w", r.err), guest.ErrProtocol)
		}
		if err := checkPeer(r.c, p.cmd.Process.Pid); err != nil {
			r.c.Close()
			return nil, err
		}
		return r.c, nil
	case <-p.exited:
		// A guest that connected and exited at once may have left its
		// connection in the backlog, not yet accepted: give the accept a
		// moment to take it, then read what it sent.
		_ = ln.SetDeadline(time.Now().Add(200 * time.Millisecond))
		r := <-ch
		ln.Close()
		if r.err == nil {
			return r.c, nil
		}
		return nil, p.exitError("guest process exited before connecting to the bridge")
	case <-ctx.Done():
		ln.Close()
		<-ch
		return nil, ctxError(ctx, "before the guest connected")
	}
}

// checkPeer makes sure the connection comes from our child (same uid, same pid).
func checkPeer(c *net.UnixConn, pid int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return guest.AsError(err, guest.ErrProtocol)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return guest.AsError(err, guest.ErrProtocol)
	}
	if cerr != nil {
		return guest.AsError(fmt.Errorf("peer credentials: %w", cerr), guest.ErrProtocol)
	}
	if int(cred.Uid) != os.Getuid() || int(cred.Pid) != pid {
		return guest.Errorf(guest.ErrProtocol, "bridge connection from pid %d uid %d, expected the guest pid %d", cred.Pid, cred.Uid, pid)
	}
	return nil
}

// batch is one decoded record on its way from the frame reader to Emit.
type batch struct {
	topic string
	rec   arrow.RecordBatch // retained by the reader, released by the emitter
}

// errStopped tells the frame reader that the emitter gave up.
var errStopped = errors.New("emitter stopped")

// session reads frames until END or ERROR and waits for a clean exit. Frames
// are read and decoded on one goroutine while the batches are emitted (sunk)
// on this one, so decoding the next batch overlaps writing the current one;
// at most three batches are in memory at once.
func (p *proc) session(ctx context.Context, conn *net.UnixConn, in guest.Input, out guest.Output) error {
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	batches := make(chan batch, 1)
	quit := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		defer close(batches)
		result <- p.readFrames(ctx, conn, out, batches, quit)
	}()
	var emitErr error
	for b := range batches {
		if emitErr == nil {
			if emitErr = out.Emit(ctx, b.topic, b.rec); emitErr != nil {
				close(quit)
				conn.SetReadDeadline(time.Unix(1, 0))
			}
		}
		b.rec.Release()
	}
	err := <-result
	if emitErr != nil {
		return guest.AsError(emitErr, guest.ErrSink)
	}
	return err
}

// readFrames reads the session's frames, sending decoded batches to batches
// and handling the other frames itself.
func (p *proc) readFrames(ctx context.Context, conn *net.UnixConn, out guest.Output, batches chan<- batch, quit <-chan struct{}) error {
	lim := p.cfg.Limits.WithDefaults()
	r := bridge.NewReader(bufio.NewReaderSize(&idleReader{c: conn, idle: p.cfg.IdleTimeout, ctx: ctx, quit: quit}, 1<<20), lim)

	readErr := func(err error, during string) error {
		if ctx.Err() != nil {
			return ctxError(ctx, during)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return p.withStderr(&guest.Error{Kind: guest.ErrTimeout, ExitCode: -1,
				Message: fmt.Sprintf("no data from the plugin for %s %s", p.cfg.IdleTimeout, during),
				Hint:    "the plugin may be stuck; if it legitimately computes that long between batches, raise the idle timeout"})
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, bridge.ErrTruncated) || errors.Is(err, syscall.ECONNRESET) {
			if p.waitExit(2 * time.Second) {
				if !p.exitedOK() {
					return p.exitError("guest process died " + during)
				}
			}
			return p.withStderr(&guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
				Message: "guest closed the bridge without an end-of-stream frame " + during, Err: err})
		}
		if errors.Is(err, bridge.ErrFrameTooLarge) {
			return &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1, Message: err.Error(),
				Hint: "publish smaller tables, or raise the frame limit"}
		}
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Message: fmt.Sprintf("bad data on the bridge %s: %v", during, err),
			Hint: "something in the guest wrote to the bridge socket outside the SDK", Err: err}
	}

	f, err := r.Next()
	if err != nil {
		if errors.Is(err, errStopped) {
			return err
		}
		return readErr(err, "before HELLO")
	}
	if f.Type != bridge.FrameHello {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("first frame is %s, expected HELLO; the guest is not speaking the bridge protocol", f.Type)}
	}
	var hello bridge.Hello
	if err := f.Decode(&hello); err != nil || hello.Magic != bridge.Magic {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Message: fmt.Sprintf("invalid HELLO frame %q", guestlog.Truncate(string(f.Payload), 200))}
	}
	if hello.Version != bridge.ProtocolVersion {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("guest speaks bridge protocol %d, host speaks %d", hello.Version, bridge.ProtocolVersion),
			Hint:    "the guest SDK and the host are different versions"}
	}
	mem := p.cfg.Allocator
	for {
		f, err := r.Next()
		if err != nil {
			if errors.Is(err, errStopped) {
				return err
			}
			return readErr(err, "in mid-stream")
		}
		switch f.Type {
		case bridge.FrameBatch:
			topic := f.Topic
			_, err := bridge.ReadIPC(f.Body, int64(f.Len), mem, func(rec arrow.RecordBatch) error {
				rec.Retain()
				select {
				case batches <- batch{topic: topic, rec: rec}:
					return nil
				case <-quit:
					rec.Release()
					return errStopped
				case <-ctx.Done():
					rec.Release()
					return ctx.Err()
				}
			})
			if err != nil {
				if errors.Is(err, errStopped) {
					return err
				}
				if ctx.Err() != nil {
					return ctxError(ctx, "in mid-stream")
				}
				if errors.Is(err, bridge.ErrInvalidArrow) {
					return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
						Message: fmt.Sprintf("topic %q: %v", topic, err), Err: err}
				}
				return readErr(err, "in a BATCH frame")
			}
		case bridge.FrameLog:
			var m bridge.LogMessage
			if err := f.Decode(&m); err != nil {
				return readErr(err, "in a LOG frame")
			}
			attrs := []slog.Attr{}
			if m.Logger != "" {
				attrs = append(attrs, slog.String("logger", m.Logger))
			}
			out.Log(guest.LogRecord{Level: parseLevel(m.Level), Message: m.Message, Stream: "sdk", Attrs: attrs})
		case bridge.FrameError:
			var m bridge.ErrorMessage
			if err := f.Decode(&m); err != nil {
				return readErr(err, "in an ERROR frame")
			}
			e := &guest.Error{Kind: guest.KindFromCode(m.Kind), Message: m.Message, Traceback: m.Traceback, ExitCode: -1}
			if m.Type != "" {
				e.Message = m.Type + ": " + m.Message
			}
			e.Hint = errorHint(e.Kind)
			if p.sb != nil && (m.Type == "PermissionError" || strings.Contains(m.Message, "Permission denied")) {
				e.Hint = "if the path is outside the plugin's scratch directory: the sandbox lets plugins write only there " +
					"(their working directory and TMPDIR, removed after the job); publish results as tables instead, " +
					"or add the path to the python guest's Sandbox.Writable"
			}
			if m.Type == "MemoryError" {
				e.Kind = guest.ErrResourceLimit
				e.Hint = fmt.Sprintf("the plugin ran out of memory; its address space is capped at %d MiB "+
					"(python guest ProcessLimits.AddressSpace): hold less in memory, or raise the limit", p.limits.AddressSpace>>20)
			}
			p.waitExit(p.cfg.ExitTimeout)
			return e
		case bridge.FrameEnd:
			if !p.waitExit(p.cfg.ExitTimeout) {
				return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1,
					Message: fmt.Sprintf("guest sent end-of-stream but did not exit within %s", p.cfg.ExitTimeout),
					Hint:    "a thread or atexit handler in the plugin keeps the process alive"}
			}
			if !p.exitedOK() {
				return p.exitError("guest process failed after end-of-stream")
			}
			return nil
		default:
			return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Message: fmt.Sprintf("unexpected %s frame", f.Type)}
		}
	}
}

func errorHint(kind error) string {
	switch kind {
	case guest.ErrPlugin:
		return "the traceback above points at the plugin line that raised"
	case guest.ErrSchema:
		return "publish a pandas or polars DataFrame, a pyarrow Table or RecordBatch, with a valid topic name"
	case guest.ErrInput:
		return "check that the input file exists and is readable"
	}
	return ""
}

func parseLevel(s string) slog.Level {
	switch strings.ToUpper(s) {
	case "DEBUG":
		return slog.LevelDebug
	case "WARNING", "WARN":
		return slog.LevelWarn
	case "ERROR", "CRITICAL":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// waitExit waits up to d for the process to exit and reports whether it did.
func (p *proc) waitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}

func (p *proc) exitedOK() bool { return p.state != nil && p.state.Success() }

// exitError describes how the process ended, with its last stderr lines.
func (p *proc) exitError(what string) *guest.Error {
	e := &guest.Error{Kind: guest.ErrCrashed, ExitCode: -1}
	if p.state != nil {
		if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
			e.Message = fmt.Sprintf("%s: killed by signal %s", what, unix.SignalName(ws.Signal()))
		} else {
			e.ExitCode = p.state.ExitCode()
			e.Message = fmt.Sprintf("%s: exit status %d", what, e.ExitCode)
		}
	} else {
		e.Message = what
	}
	p.withStderr(e)
	if strings.Contains(e.Stderr, "No module named 'pyarrow'") {
		e.Hint = fmt.Sprintf("the interpreter %s has no pyarrow: run `make venv` and use .venv/bin/python, or `pip install pyarrow`", p.cfg.Python)
	} else if e.Hint == "" {
		e.Hint = "the last stderr lines above show why the process ended"
	}
	return e
}

func (p *proc) withStderr(e *guest.Error) *guest.Error {
	if e.Stderr == "" {
		// Let the last lines in flight arrive (a grandchild may hold the pipe, so not forever).
		select {
		case <-p.drained:
		case <-time.After(300 * time.Millisecond):
		}
		e.Stderr = p.tail.String()
	}
	return e
}

// cleanup stops the process group: SIGTERM, grace, SIGKILL (no SIGTERM and
// no grace once the job's deadline has passed); always SIGKILL the group at
// the end so nothing the plugin forked survives.
func (p *proc) cleanup(pastDeadline bool) {
	if p.cmd == nil {
		return
	}
	pgid := p.cmd.Process.Pid
	select {
	case <-p.exited:
	default:
		if !pastDeadline {
			_ = unix.Kill(-pgid, unix.SIGTERM)
			p.waitExit(p.cfg.KillGrace)
		}
	}
	_ = unix.Kill(-pgid, unix.SIGKILL)
	<-p.exited
	// Whatever the plugin started, even outside its process group, dies
	// with its cgroup.
	p.closeSandbox()
	// The group is dead, so the pipes reach EOF, unless a process that left
	// the group (setsid) still holds them: then stop reading after a while.
	select {
	case <-p.drained:
	case <-time.After(2 * time.Second):
		for _, f := range p.pipes {
			f.Close()
		}
		<-p.drained
	}
	for _, f := range p.pipes {
		f.Close()
	}
	p.log.Debug("guest process ended", "pid", pgid, "state", p.state.String(), "duration", time.Since(p.started).Round(time.Millisecond))
}

func ctxError(ctx context.Context, during string) *guest.Error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1, Message: "job deadline exceeded " + during,
			Hint: "the plugin ran longer than the job timeout; raise it if the input is legitimately large"}
	}
	return &guest.Error{Kind: guest.ErrCancelled, ExitCode: -1, Message: "job cancelled " + during, Err: context.Cause(ctx)}
}

// idleReader applies the idle timeout to every read and stops reading once
// ctx is done or quit is closed. (Whoever cancels also sets a past read
// deadline to unblock a read in progress; checking again after setting the
// idle deadline makes sure that one is never overwritten unnoticed.)
type idleReader struct {
	c    *net.UnixConn
	idle time.Duration
	ctx  context.Context
	quit <-chan struct{}
}

func (r *idleReader) stopped() error {
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-r.quit:
		return errStopped
	default:
		return nil
	}
}

func (r *idleReader) Read(b []byte) (int, error) {
	if err := r.stopped(); err != nil {
		return 0, err
	}
	if err := r.c.SetReadDeadline(time.Now().Add(r.idle)); err != nil {
		return 0, err
	}
	if err := r.stopped(); err != nil {
		return 0, err
	}
	return r.c.Read(b)
}

// Preflight checks once that the interpreter runs, is Python 3.10 or newer
// and can import pyarrow, so a misconfigured host fails at start with one
// clear message instead of failing every job. It returns the versions found.
func (r *Runtime) Preflight(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
	defer cancel()
	const probe = "import sys; v = sys.version_info; sys.exit(f'Python {v[0]}.{v[1]} is too old: 3.10+ is needed') if v < (3, 10) else None; " +
		"import pyarrow; print(f'Python {v[0]}.{v[1]}.{v[2]}, pyarrow {pyarrow.__version__}')"
	cmd := exec.CommandContext(ctx, r.cfg.Python, "-I", "-c", probe)
	cmd.Env = guestEnv(os.TempDir(), r.cfg.Env)
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	if err != nil {
		lines := strings.Split(text, "\n")
		last := lines[len(lines)-1]
		hint := "point --python (or $CASPARIAN_PYTHON) at an interpreter with pyarrow; `make venv` creates one in .venv"
		return "", fmt.Errorf("python guest: %s cannot run plugins: %s\n%s", r.cfg.Python, last, hint)
	}
	return text, nil
}
