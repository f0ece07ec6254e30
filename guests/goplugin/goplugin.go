// Package goplugin is the go-plugin guest: it runs Go plugins built with
// sdk/goplugin (serve.Main) as separate executables over hashicorp/go-plugin
// and gRPC, and streams the Arrow record batches they emit to the host.
//
// # Process lifecycle
//
// Before a plugin process starts, the executable's SHA-256 is checked against
// guest.Plugin.Hash with go-plugin's SecureConfig (a mismatch is refused and
// nothing runs). The process gets its own process group, a private working
// and temp directory, a reduced environment, AutoMTLS, and a stdin pipe whose
// only write end the host holds: if the host dies, even by SIGKILL, the
// plugin's SDK sees EOF (and on Linux a SIGTERM from Pdeathsig) and kills its
// process group, so nothing is orphaned. Unless Config.NoSandbox, it also
// runs sandboxed (internal/sandbox): in a pids cgroup of its own, killed with
// everything in it when the process stops, and under Landlock, writing only
// in its private directory. go-plugin's handshake, the TLS dial
// and the plugin's Info call together must finish within
// Config.StartTimeout; a plugin that writes to stdout before the handshake
// fails at once with an error quoting what it wrote.
//
// Processes are kept warm between jobs in a bounded pool keyed by the
// artifact's hash: one process runs one job at a time, concurrent jobs get
// their own processes (so the caller's concurrency bounds the running ones;
// the pool bounds the idle ones), and a process is recycled after
// Config.MaxJobsPerProcess jobs or Config.MaxIdleTime unused. A process that
// crashed, timed out, was cancelled, broke the protocol, had a batch refused
// or panicked is killed (SIGKILL to its group) before Run returns and never
// reused; one whose plugin returned an error is reused.
//
// # Data and logs
//
// Each batch arrives as an Arrow IPC stream cut into chunks of at most
// Config.ChunkBytes (see sdk/goplugin); it is decoded while it arrives by the
// bridge's hardened IPC reader (bridge.ReadIPC), checked against the topics
// and schemas the plugin declared in Info, and passed to guest.Output.Emit.
// Records of the SDK's logger arrive on the same stream (Stream "sdk");
// everything the plugin writes to stdout (Stream "stdout", level info) and
// stderr (Stream "stderr") is forwarded line by line, hclog JSON lines with
// their own level and fields, other stderr lines at warn. The last stderr
// lines are quoted in crash errors.
package goplugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/filehash"
	"github.com/casparianflow/casparian/internal/rlimit"
	"github.com/casparianflow/casparian/internal/sandbox"
	sdkgp "github.com/casparianflow/casparian/sdk/goplugin"
)

// Defaults for Config's zero values.
const (
	DefaultStartTimeout      = 10 * time.Second
	DefaultMaxIdle           = 8
	DefaultMaxIdlePerPlugin  = 4
	DefaultMaxJobsPerProcess = 1000
	DefaultMaxIdleTime       = 2 * time.Minute
	DefaultKillGrace         = 2 * time.Second
	DefaultChunkBytes        = sdkgp.DefaultChunkBytes
	DefaultMaxBatchBytes     = 256 << 20
	DefaultStderrTail        = 20
	// maxMessage caps one gRPC message from a plugin (gRPC's own default):
	// chunks are at most 3 MiB and log records far less.
	maxMessage = 4 << 20
)

// envAllowList is what a plugin inherits from the host's environment.
var envAllowList = []string{"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"}

// Config configures the go-plugin guest. Every zero value means the default.
type Config struct {
	// StartTimeout bounds a process start: exec, go-plugin's handshake, the
	// TLS connection and the plugin's Info call. Default 10 s.
	StartTimeout time.Duration
	// MaxIdle caps the warm processes kept across all plugins; beyond it the
	// longest-idle one is stopped. Default 8. Negative keeps no process
	// between jobs (a fresh process per job).
	MaxIdle int
	// MaxIdlePerPlugin caps the warm processes kept per plugin artifact
	// (the concurrency at which a plugin stays warm). Default 4.
	MaxIdlePerPlugin int
	// MaxJobsPerProcess recycles a process after it served that many jobs,
	// bounding what a leaky plugin can accumulate. Default 1000.
	MaxJobsPerProcess int
	// MaxIdleTime stops a warm process that has not served a job for that
	// long. Default 2 min.
	MaxIdleTime time.Duration
	// KillGrace is how long a process being recycled or closed gets to exit
	// after go-plugin's shutdown call before it is killed. Cancelled, timed-out
	// and failed jobs are killed at once. Default 2 s.
	KillGrace time.Duration
	// ChunkBytes is the size of the chunks batches are sent in. Default
	// 1 MiB; at most 3 MiB, so every message stays under gRPC's 4 MiB cap.
	ChunkBytes int
	// MaxBatchBytes caps the Arrow IPC stream of one batch; a bigger batch
	// fails the job with RESOURCE_LIMIT. Default 256 MiB.
	MaxBatchBytes int64
	// LogLevel is the lowest level of the records the SDK logger sends.
	// Default (the zero value) slog.LevelInfo.
	LogLevel slog.Level
	// Env adds KEY=VALUE entries to the plugins' reduced environment.
	Env []string
	// TempDir is where the runtime's private directory (per-process working
	// dirs, go-plugin's Unix sockets, inline binaries) is made. Default
	// os.TempDir(). Unix socket paths are limited to 107 bytes: keep it short.
	TempDir string
	// StderrTail is how many stderr lines a crash error quotes. Default 20.
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
	// default 512; whatever is left when the process stops is killed), and
	// Landlock: it reads anywhere but writes only under its private
	// directory (its working directory and TMPDIR, where go-plugin makes its
	// socket; removed when the process stops; plus Sandbox.Writable), and
	// cannot bind or connect TCP sockets unless Sandbox.AllowNetwork.
	// NoSandbox starts plugin processes directly, with the resource limits
	// only.
	Sandbox   sandbox.Options
	NoSandbox bool
	// Logger receives the runtime's own diagnostics (process start and stop,
	// go-plugin's messages, plugin output between jobs) at debug level.
	// Plugin output during a job goes to the guest.Output. nil discards.
	Logger *slog.Logger
}

// limits returns the resource limits of a plugin process.
func (c Config) limits() rlimit.Limits { return c.ProcessLimits.Effective(c.NoProcessLimits) }

// Runtime runs go-plugin plugins. It is safe for concurrent use.
type Runtime struct {
	cfg   Config
	log   *slog.Logger
	dir   string // private dir: p-* process dirs, bin/ inline binaries
	spawn *spawner

	mu     sync.Mutex
	closed bool
	idle   map[string][]*proc // warm processes by artifact hash, oldest first
	nIdle  int
	live   map[*proc]struct{} // every process not yet cleaned up
	bg     sync.WaitGroup     // background retirements
}

var _ guest.Runtime = (*Runtime)(nil)

// New checks cfg and returns a Runtime. Close it to stop its processes.
func New(cfg Config) (*Runtime, error) {
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.MaxIdle == 0 {
		cfg.MaxIdle = DefaultMaxIdle
	}
	if cfg.MaxIdlePerPlugin <= 0 {
		cfg.MaxIdlePerPlugin = DefaultMaxIdlePerPlugin
	}
	if cfg.MaxJobsPerProcess <= 0 {
		cfg.MaxJobsPerProcess = DefaultMaxJobsPerProcess
	}
	if cfg.MaxIdleTime <= 0 {
		cfg.MaxIdleTime = DefaultMaxIdleTime
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = DefaultChunkBytes
	}
	if cfg.ChunkBytes < sdkgp.MinChunkBytes || cfg.ChunkBytes > sdkgp.MaxChunkBytes {
		return nil, fmt.Errorf("goplugin guest: ChunkBytes %d is outside [%d, %d]", cfg.ChunkBytes, sdkgp.MinChunkBytes, sdkgp.MaxChunkBytes)
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
			return nil, fmt.Errorf("goplugin guest: env entry %q is not KEY=VALUE", kv)
		}
	}
	removeStaleDirs(cfg.TempDir)
	dir, err := os.MkdirTemp(cfg.TempDir, fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("goplugin guest: %w", err)
	}
	// go-plugin's socket: <dir>/p-<10>/plugin-dir<10>/plugin<10>
	if n := len(dir) + len("/p-0123456789/plugin-dir0123456789/plugin0123456789"); n > 107 {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("goplugin guest: TempDir %q is too long for Unix socket paths (%d > 107 bytes)", cfg.TempDir, n)
	}
	return &Runtime{cfg: cfg, log: cfg.Logger, dir: dir, spawn: newSpawner(),
		idle: map[string][]*proc{}, live: map[*proc]struct{}{}}, nil
}

// dirPrefix starts the name of a runtime's private dir: cf-gp-<host pid>-<random>.
const dirPrefix = "cf-gp-"

// removeStaleDirs removes the private dirs that runtimes of dead hosts (a
// host killed with SIGKILL cannot clean up) left in tmp: ours (same owner)
// whose host pid no longer runs. A reused pid only keeps a stale dir longer.
func removeStaleDirs(tmp string) {
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := info.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Getuid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(filepath.Join(tmp, e.Name()))
		}
	}
}

// Kind reports guest.KindGoPlugin.
func (r *Runtime) Kind() guest.Kind { return guest.KindGoPlugin }

// Load checks the plugin executable (or writes inline bytes to a private
// file), computes its SHA-256 when p.Hash is empty, and returns an instance.
// Nothing starts until Run; the hash is verified before every process start.
func (r *Runtime) Load(_ context.Context, p guest.Plugin) (guest.Instance, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, guest.Errorf(guest.ErrPlugin, "goplugin guest is closed")
	}
	name := p.Name
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(p.Path), filepath.Ext(p.Path))
	}
	path, hash, err := r.artifact(p)
	if err != nil {
		return nil, err
	}
	p.Hash = hash
	r.log.Debug("go plugin loaded", "plugin", name, "path", path, "sha256", hash)
	return &instance{rt: r, plugin: p, name: name, path: path}, nil
}

// artifact returns the executable to run and its expected SHA-256.
func (r *Runtime) artifact(p guest.Plugin) (path, hash string, err error) {
	if p.Hash != "" {
		if b, err := hex.DecodeString(p.Hash); err != nil || len(b) != sha256.Size {
			return "", "", guest.Errorf(guest.ErrPlugin, "plugin %q: hash %q is not a SHA-256 hex digest", p.Name, p.Hash)
		}
		p.Hash = strings.ToLower(p.Hash)
	}
	if p.Source != nil {
		sum := sha256.Sum256(p.Source)
		got := hex.EncodeToString(sum[:])
		if p.Hash != "" && p.Hash != got {
			return "", "", checksumError(p.Name, p.Hash, got)
		}
		bin := filepath.Join(r.dir, "bin")
		if err := os.MkdirAll(bin, 0o700); err != nil {
			return "", "", guest.AsError(fmt.Errorf("goplugin guest: %w", err), guest.ErrResourceLimit)
		}
		path = filepath.Join(bin, got)
		if _, err := os.Stat(path); err != nil {
			tmp, err := os.CreateTemp(bin, "tmp-")
			if err == nil {
				_, err = tmp.Write(p.Source)
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = os.Chmod(tmp.Name(), 0o700)
				}
				if err == nil {
					err = os.Rename(tmp.Name(), path)
				}
				if err != nil {
					os.Remove(tmp.Name())
				}
			}
			if err != nil {
				return "", "", guest.AsError(fmt.Errorf("goplugin guest: write plugin binary: %w", err), guest.ErrResourceLimit)
			}
		}
		return path, got, nil
	}
	if p.Path == "" {
		return "", "", guest.Errorf(guest.ErrPlugin, "plugin %q has neither a path nor inline bytes", p.Name)
	}
	if path, err = filepath.Abs(p.Path); err != nil {
		return "", "", guest.AsError(err, guest.ErrPlugin)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", "", &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin executable %s: %v", path, errors.Unwrap(err)), Hint: "check the plugin path"}
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", "", &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s is not an executable file (mode %s)", path, st.Mode()),
			Hint:    "build the plugin with `go build` (its main calls serve.Main) and make it executable"}
	}
	if p.Hash == "" {
		if p.Hash, err = filehash.File(path); err != nil {
			return "", "", &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err, Message: fmt.Sprintf("read plugin %s: %v", path, err)}
		}
	}
	return path, p.Hash, nil
}

func checksumError(name, want, got string) *guest.Error {
	msg := fmt.Sprintf("plugin %q: the executable's SHA-256 does not match the expected hash %s; refusing to start it", name, want)
	if got != "" {
		msg = fmt.Sprintf("plugin %q: the executable's SHA-256 is %s, expected %s; refusing to start it", name, got, want)
	}
	return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Message: msg,
		Hint: "the binary changed since it was published: publish it again, or restore the published build"}
}

// instance is a loaded plugin. Its processes belong to the runtime's pool.
type instance struct {
	rt     *Runtime
	plugin guest.Plugin // Hash set
	name   string
	path   string // absolute path of the executable
}

var (
	_ guest.Instance   = (*instance)(nil)
	_ guest.Concurrent = (*instance)(nil)
)

// Concurrent is true: each Run gets a process of its own from the pool.
func (i *instance) Concurrent() bool { return true }

// Close does nothing: warm processes belong to the runtime (see Runtime.Close).
func (i *instance) Close(context.Context) error { return nil }

// Hash returns the SHA-256 of the plugin executable: the one given in
// guest.Plugin.Hash, or the one Load computed.
func (i *instance) Hash() string { return i.plugin.Hash }

// Run takes a warm process of the plugin (or starts one), runs the job on it
// and streams the batches to out. See the package doc for what happens to
// the process afterwards.
func (i *instance) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	if ctx.Err() != nil {
		return ctxError(ctx, "before the plugin started")
	}
	p, err := i.rt.acquire(ctx, i)
	if err != nil {
		return err
	}
	reusable, err := p.job(ctx, in, out)
	if p.sb.ForkFailures() > 0 {
		// What it started fills its cgroup: the process is not reused.
		reusable = false
		err = p.limitError(err)
	}
	i.rt.release(p, reusable)
	return err
}

func ctxError(ctx context.Context, during string) *guest.Error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1, Message: "job deadline exceeded " + during,
			Hint: "the plugin ran longer than the job timeout and was killed; raise the timeout if the input is legitimately large"}
	}
	return &guest.Error{Kind: guest.ErrCancelled, ExitCode: -1, Message: "job cancelled " + during, Err: context.Cause(ctx)}
}

// Close stops every plugin process: running jobs are killed (their Run
// returns CANCELLED), warm processes are asked to exit and killed after
// KillGrace. It waits until every process is gone, or ctx is done. It is
// idempotent; Loads and Runs after Close fail.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	var idle []*proc
	for _, list := range r.idle {
		for _, p := range list {
			p.timer.Stop()
			idle = append(idle, p)
		}
	}
	r.idle, r.nIdle = map[string][]*proc{}, 0
	isIdle := make(map[*proc]bool, len(idle))
	for _, p := range idle {
		isIdle[p] = true
	}
	var all []*proc
	for p := range r.live {
		all = append(all, p)
		if !isIdle[p] {
			p.closing.Store(true)
			p.run.kill()
		}
	}
	for _, p := range idle {
		r.bg.Add(1)
		go func() {
			defer r.bg.Done()
			p.retire()
		}()
	}
	r.mu.Unlock()

	var err error
	for _, p := range all {
		select {
		case <-p.gone:
		case <-ctx.Done():
			err = fmt.Errorf("goplugin guest: close: %w", ctx.Err())
		}
		if err != nil {
			break
		}
	}
	if err != nil {
		return err
	}
	r.bg.Wait()
	r.spawn.stop()
	if rerr := os.RemoveAll(r.dir); rerr != nil {
		return fmt.Errorf("goplugin guest: close: %w", rerr)
	}
	return nil
}
