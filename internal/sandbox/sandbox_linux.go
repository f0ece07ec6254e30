package sandbox

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"github.com/casparianflow/casparian/internal/rlimit"
)

// The wrapper: a process started with EnvExec set is not the host but a
// guest about to be sandboxed. It never returns to the binary's main.
func init() {
	if v, ok := os.LookupEnv(EnvExec); ok {
		os.Exit(wrapperMain(v))
	}
}

// self is the host's own executable as the child sees it right after the
// fork: still the host's image, even if the file was replaced since.
const self = "/proc/self/exe"

// wrapperArg0 is the wrapper's argv[0] (what ps shows until the exec).
const wrapperArg0 = "casparian-sandbox"

var landlockOnce sync.Once

func newGuest(opts Options, dir string, log *slog.Logger) (*Guest, error) {
	g := &Guest{dir: dir, opts: opts}
	if m := cgroups(log); m.version != 0 {
		cg, err := m.create(opts.maxProcesses())
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		g.cg = cg
	}
	landlockOnce.Do(func() {
		switch abi := LandlockABI(); {
		case abi < 1:
			log.Warn("sandbox: Landlock is not available (Linux 5.13+ with landlock in the lsm= boot list): plugins can write wherever the host's user can")
		case abi < 4:
			log.Info("sandbox: this kernel's Landlock cannot restrict the network (ABI 4+, Linux 6.7+): plugins may open TCP connections", "landlock_abi", abi)
		}
	})
	return g, nil
}

func (g *Guest) wrap(cmd *exec.Cmd, limits rlimit.Limits) (bool, error) {
	path := cmd.Path
	if !filepath.IsAbs(path) && cmd.Dir != "" {
		path = filepath.Join(cmd.Dir, path)
	}
	// Starting the wrapper always works: tell a missing or non-executable
	// guest command now, as starting it directly would.
	if err := unix.Access(path, unix.X_OK); err != nil {
		return false, &exec.Error{Name: cmd.Path, Err: err}
	}
	s := spec{Path: cmd.Path, Landlock: true, Network: g.opts.AllowNetwork, Limits: limits,
		Writable: append([]string{g.dir}, g.opts.Writable...)}
	if g.cg != nil {
		s.Cgroup = g.cg.dir
	}
	b, err := json.Marshal(s)
	if err != nil {
		return false, fmt.Errorf("sandbox: %w", err)
	}
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	cmd.Env = append(withoutExec(env), EnvExec+"="+string(b))
	cmd.Args = append([]string{wrapperArg0}, cmd.Args...)
	cmd.Path = self
	return true, nil
}

func withoutExec(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, EnvExec+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// wrapperMain sandboxes this process as spec v says and executes the guest
// (os.Args[1:]). It returns only on failure, with the exit status.
func wrapperMain(v string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "casparian sandbox: "+format+"\n", a...)
		return exitWrapperFailed
	}
	var s spec
	if err := json.Unmarshal([]byte(v), &s); err != nil || s.Path == "" || len(os.Args) < 2 {
		return fail("invalid wrapper invocation (%s=%.80q, %d arguments)", EnvExec, v, len(os.Args))
	}
	env := withoutExec(os.Environ())
	// Join the cgroup first: nothing of the guest runs outside it, and
	// Landlock would forbid the write afterwards.
	if s.Cgroup != "" {
		procs := filepath.Join(s.Cgroup, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return fail("join the plugin's cgroup: %v", err)
		}
	}
	// The Landlock domain is a property of this thread's credentials, which
	// execve passes on: restrict and exec on the same, locked, thread.
	runtime.LockOSThread()
	if s.Landlock {
		if err := restrictThread(s); err != nil {
			return fail("Landlock: %v", err)
		}
	}
	// Last, as the limits (address space above all) may hamper this
	// process itself.
	if err := s.Limits.Apply(0); err != nil {
		return fail("%v", err)
	}
	err := syscall.Exec(s.Path, os.Args[1:], env)
	return fail("exec %s: %v", s.Path, err)
}

// LandlockABI is the Landlock ABI version the kernel supports (0: none).
func LandlockABI() int {
	v, err := llsys.LandlockGetABIVersion()
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// restrictThread applies the Landlock rules of s to the calling thread
// (which must be locked to its goroutine): read and execute everywhere,
// write only to s.Writable and a few devices, no TCP/UDP unless s.Network.
func restrictThread(s spec) error {
	abi := LandlockABI()
	if abi < 1 {
		return nil
	}
	cfg := landlock.V11.BestEffort()
	if s.Network {
		cfg.HandledAccessNet = 0
	}
	rules := []landlock.Rule{
		landlock.RODirs("/"),
		landlock.RWFiles("/dev/null", "/dev/zero", "/dev/full").IgnoreIfMissing(),
	}
	for _, p := range s.Writable {
		st, err := os.Stat(p)
		switch {
		case err != nil:
			continue // documented: missing paths are ignored
		case st.IsDir():
			r := landlock.RWDirs(p).WithResolveUnix() // connect to sockets there (the Python bridge)
			if abi >= 2 {
				r = r.WithRefer() // rename and link between its subdirectories
			}
			rules = append(rules, r)
		default:
			rules = append(rules, landlock.RWFiles(p))
		}
	}
	fd, flags, err := cfg.NewRulesetFD(rules...)
	if err != nil {
		return err
	}
	if fd < 0 {
		return nil
	}
	defer unix.Close(fd)
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	if err := llsys.LandlockRestrictSelf(fd, flags); err != nil {
		return fmt.Errorf("landlock_restrict_self: %w", err)
	}
	return nil
}

// Status tells what the sandbox can use on this machine.
type Status struct {
	// CgroupVersion is 1 or 2 when guests get a pids cgroup, 0 when not
	// (CgroupReason says why).
	CgroupVersion int
	CgroupReason  string
	// CgroupParent is the directory of the host's guest cgroups
	// (<parent>/g<n>), present while a guest runs.
	CgroupParent string
	// LandlockABI is the kernel's Landlock ABI version (0: none).
	LandlockABI int
}

// Check detects (once per process) what the sandbox can use.
func Check(log *slog.Logger) Status {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := cgroups(log)
	st := Status{CgroupVersion: m.version, CgroupReason: m.reason, LandlockABI: LandlockABI()}
	if m.version != 0 {
		st.CgroupParent = m.hostDir()
	}
	return st
}

// Leftovers lists this host's guest cgroups that still exist and the
// processes in them: both empty once every guest has been closed.
func Leftovers() (dirs []string, pids []int) {
	return cgroups(slog.New(slog.DiscardHandler)).leftovers()
}
