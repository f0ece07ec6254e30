package goplugin

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"golang.org/x/sys/unix"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
)

// pipeEscapeWait is how long the pipes may stay open after the process
// exited (a grandchild that left the process group may hold them) before the
// host stops reading them.
const pipeEscapeWait = 2 * time.Second

// procRunner starts and watches one plugin process; go-plugin drives it
// through the runner.Runner interface (ClientConfig.RunnerFunc). Owning the
// process rather than letting go-plugin's CmdRunner do it gives the host what
// go-plugin lacks: the checksum check right before exec, a process group,
// Pdeathsig, a stdin pipe for the plugin's parent watch, cancellable starts,
// stdout after the handshake, and stderr lines in the host's log format.
type procRunner struct {
	p     *proc
	path  string
	want  []byte // SHA-256 of the executable
	spawn *spawner

	mu       sync.Mutex
	dir      string
	env      []string // complete environment of the process
	pid      int
	started  bool
	killed   bool
	preErr   *guest.Error // why the process was never started
	first    string       // first stdout line: the handshake, or junk
	gotFirst bool
	partial  []byte // stdout bytes before the first newline, while it has not come

	stdin   *os.File   // write end of the plugin's stdin, held until the process is stopped
	pipes   []*os.File // read ends of stdout and stderr
	hsR     *io.PipeReader
	hsW     *io.PipeWriter // carries the first stdout line to go-plugin
	eofR    *io.PipeReader
	eofW    *io.PipeWriter // closed when stderr is drained: go-plugin's stderr reader sees EOF
	exited  chan struct{}  // closed when the process has been reaped
	state   *os.ProcessState
	drained chan struct{} // closed when stdout and stderr are drained (or abandoned)
}

var _ runner.Runner = (*procRunner)(nil)

func newRunner(p *proc, path string, want []byte, spawn *spawner) *procRunner {
	r := &procRunner{p: p, path: path, want: want, spawn: spawn,
		exited: make(chan struct{}), drained: make(chan struct{})}
	r.hsR, r.hsW = io.Pipe()
	r.eofR, r.eofW = io.Pipe()
	return r
}

// Start verifies the executable's checksum with go-plugin's SecureConfig
// and starts it, unless the start was already abandoned.
func (r *procRunner) Start(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.killed {
		return errors.New("start abandoned")
	}
	sc := &plugin.SecureConfig{Checksum: r.want, Hash: sha256.New()}
	ok, err := sc.Check(r.path)
	if err != nil {
		r.preErr = &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q: verify the executable %s: %v", r.p.name, r.path, err)}
		return err
	}
	if !ok {
		r.preErr = checksumError(r.p.name, hex.EncodeToString(r.want), "")
		return plugin.ErrChecksumsDoNotMatch
	}

	var files []*os.File // child ends, closed once the child has them
	pipe := func() (*os.File, *os.File) {
		rd, wr, perr := os.Pipe()
		if perr != nil && err == nil {
			err = perr
		}
		return rd, wr
	}
	stdinR, stdinW := pipe()
	outR, outW := pipe()
	errR, errW := pipe()
	files = append(files, stdinR, outW, errW)
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	if err != nil {
		closeAll(stdinR, stdinW, outR, outW, errR, errW)
		r.preErr = guest.AsError(fmt.Errorf("goplugin guest: pipe: %w", err), guest.ErrResourceLimit)
		return err
	}
	cmd := exec.Command(r.path)
	cmd.Dir = r.dir
	cmd.Env = r.env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, outW, errW
	cmd.SysProcAttr = sysProcAttr()
	limits := r.p.rt.cfg.limits()
	wrapped, err := r.p.sb.Wrap(cmd, limits)
	if err == nil {
		err = r.spawn.start(cmd)
	}
	closeAll(files...)
	if err != nil {
		closeAll(stdinW, outR, errR)
		r.preErr = &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q: start %s: %v", r.p.name, r.path, err),
			Hint:    "check that the file is a plugin executable built for this OS and architecture"}
		return err
	}
	// Before the plugin's main runs (the Go runtime is still starting).
	// The sandbox wrapper sets them itself, before the exec.
	if !wrapped {
		if lerr := limits.Apply(cmd.Process.Pid); lerr != nil {
			_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			_, _ = cmd.Process.Wait()
			closeAll(stdinW, outR, errR)
			r.preErr = guest.AsError(fmt.Errorf("goplugin guest: %w", lerr), guest.ErrResourceLimit)
			return lerr
		}
	}
	r.started = true
	r.pid = cmd.Process.Pid
	r.stdin = stdinW
	r.pipes = []*os.File{outR, errR}

	outDone, errDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(outDone)
		r.readStdout(outR)
	}()
	go func() {
		defer close(errDone)
		w := &guestlog.Writer{Emit: r.p.stderrLine}
		_, _ = io.Copy(w, errR)
		w.Close()
	}()
	go func() {
		st, _ := cmd.Process.Wait()
		r.state = st
		close(r.exited)
	}()
	go func() {
		<-r.exited
		t := time.NewTimer(pipeEscapeWait)
		defer t.Stop()
		for _, done := range []chan struct{}{outDone, errDone} {
			select {
			case <-done:
			case <-t.C:
				closeAll(outR, errR)
				<-done
			}
		}
		close(r.drained)
		r.hsW.Close()
		r.eofW.Close()
	}()
	return nil
}

// readStdout hands the first line to go-plugin (its handshake) and forwards
// the later ones as log records.
func (r *procRunner) readStdout(f *os.File) {
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		chunk, err := br.ReadSlice('\n')
		r.mu.Lock()
		r.partial = append(r.partial, chunk...)
		complete := err == nil || errors.Is(err, bufio.ErrBufferFull)
		var line []byte
		if complete {
			line = r.partial
			r.first, r.gotFirst, r.partial = strings.TrimRight(string(line), "\r\n"), true, nil
		}
		r.mu.Unlock()
		if complete {
			_, _ = r.hsW.Write(line)
			if line[len(line)-1] != '\n' {
				_, _ = r.hsW.Write([]byte{'\n'})
			}
			r.hsW.Close()
			break
		}
		if err != nil { // EOF before a complete line
			r.hsW.Close()
			return
		}
	}
	w := &guestlog.Writer{Emit: r.p.stdoutLine}
	_, _ = io.Copy(w, br)
	w.Close()
}

// stdout returns the first stdout line (or the bytes of an incomplete one).
func (r *procRunner) stdout() (line string, complete bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gotFirst {
		return r.first, true
	}
	return string(r.partial), false
}

// Wait waits for the process to exit (go-plugin calls it once the output
// pipes are drained).
func (r *procRunner) Wait(ctx context.Context) error {
	select {
	case <-r.exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.state != nil && !r.state.Success() {
		return errors.New(r.state.String())
	}
	return nil
}

// Kill kills the process group.
func (r *procRunner) Kill(context.Context) error {
	r.kill()
	return nil
}

// kill SIGKILLs the process group, or prevents the start if it has not
// happened yet. Idempotent.
func (r *procRunner) kill() {
	r.mu.Lock()
	r.killed = true
	pid := r.pid
	r.mu.Unlock()
	if pid > 0 {
		_ = unix.Kill(-pid, unix.SIGKILL)
	}
}

func (r *procRunner) Stdout() io.ReadCloser { return r.hsR }
func (r *procRunner) Stderr() io.ReadCloser { return r.eofR }
func (r *procRunner) Name() string          { return r.path }

func (r *procRunner) ID() string {
	if pid := r.pidNow(); pid > 0 {
		return strconv.Itoa(pid)
	}
	return ""
}

func (r *procRunner) Diagnose(context.Context) string { return "" }

func (r *procRunner) PluginToHost(n, a string) (string, string, error) { return n, a, nil }
func (r *procRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }

func (r *procRunner) pidNow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pid
}

func (r *procRunner) isStarted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started
}

func (r *procRunner) hasExited() bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to exit and reports whether it did.
func (r *procRunner) waitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.exited:
		return true
	case <-t.C:
		return false
	}
}

// closeStdin closes the host's end of the plugin's stdin: a plugin still
// running sees EOF and exits.
func (r *procRunner) closeStdin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stdin != nil {
		r.stdin.Close()
		r.stdin = nil
	}
}

// releasePipes closes the host's pipe ends once the process is gone.
func (r *procRunner) releasePipes() {
	for _, f := range r.pipes {
		f.Close()
	}
	r.hsR.Close()
	r.eofR.Close()
}

// spawner starts processes from one OS thread that lives as long as the
// runtime. Linux delivers Pdeathsig when the *thread* that forked the child
// exits, not the process (golang/go#27505); a Go thread exits when a
// goroutine locked to it ends, so starting from arbitrary threads could kill
// warm plugins at random. This thread ends only at Runtime.Close, after every
// plugin is stopped.
type spawner struct {
	mu     sync.Mutex
	closed bool
	reqs   chan spawnReq
	done   chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		defer close(s.done)
		for req := range s.reqs {
			req.err <- req.cmd.Start()
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("goplugin guest is closed")
	}
	req := spawnReq{cmd: cmd, err: make(chan error, 1)}
	s.reqs <- req
	return <-req.err
}

func (s *spawner) stop() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.reqs)
	}
	s.mu.Unlock()
	<-s.done
}
