// Package envs provisions Python virtual environments for plugins that
// declare dependencies, on a worker machine.
//
// A plugin's dependencies arrive as a lockfile: a text in pip requirements
// format ("six==1.16.0\n"). Its env_hash is the lowercase hex SHA-256 of the
// lockfile bytes (Hash), and the environment built from it is shared by every
// plugin with the same lockfile. A plugin runs in its environment by using
// the environment's interpreter, Dir/<env_hash>/bin/python, as the Python
// guest's interpreter (guests/python Config.Python); Manager.Ensure returns
// that path.
//
// # What an environment sees
//
// The worker's base interpreter (Config.BasePython) already has pyarrow and
// whatever else every plugin needs, and those packages are large; an
// environment therefore sees the base interpreter's packages and only adds
// the declared ones, which take precedence (they come first on sys.path). This
// is what `python -m venv --system-site-packages` gives when the base is a
// system interpreter. When the base is itself a virtual environment (as the
// project's .venv is), venv builds from the interpreter beneath it, and
// --system-site-packages would expose that interpreter's site-packages, not
// the base venv's. So the Manager asks the base interpreter once (in New)
// what it sees and mirrors exactly that: the system site-packages only if the
// base sees them, and the base venv's site-packages through a .pth file
// (_casparian_base.pth, "import site; site.addsitedir(...)", so that .pth
// files of the base, such as editable installs, work too). This holds under
// `python -I`, which the Python guest uses.
//
// An environment is built with uv when it is available (Config.UV):
//
//	uv venv [--system-site-packages] --python BASE ENV
//	uv pip install --python ENV/bin/python -r LOCKFILE
//
// and otherwise with the base interpreter's venv module and pip:
//
//	BASE -m venv [--system-site-packages] [--without-pip] ENV
//	ENV/bin/python -m pip install --disable-pip-version-check --no-input -r LOCKFILE
//
// --without-pip is used when the base interpreter can import pip: the
// environment then runs that same pip (it sees the base's packages), which
// still installs into the environment, and skipping ensurepip saves a few
// seconds and about 25 MB per environment. Packages the base already
// provides at a satisfying version are not installed again by pip; uv may
// install them into the environment anyway (correct, only bigger).
//
// The installer runs with the worker's environment (so PIP_INDEX_URL,
// PIP_FIND_LINKS, UV_INDEX_URL, pip.conf and the like apply) minus the
// variables that would redirect or pollute the installation (PYTHONPATH,
// PYTHONHOME, VIRTUAL_ENV, PIP_USER, PIP_TARGET, PIP_PREFIX, PIP_ROOT), and
// with PYTHONNOUSERSITE=1, since the guest never sees user site-packages.
//
// # On-disk layout
//
//	Dir/.lock                        flock'ed by the Manager that owns Dir
//	Dir/<env_hash>/                  a complete environment
//	Dir/<env_hash>/bin/python        its interpreter
//	Dir/<env_hash>/casparian-requirements.txt  the lockfile it was built from
//	Dir/<env_hash>/casparian-env.json          its metadata
//	Dir/.tmp-<hash prefix>-<random>/ a build in progress
//	Dir/.trash-<random>/             an environment being deleted
//
// casparian-env.json holds created, last_used (RFC 3339, UTC) and size_bytes
// (the apparent size of the environment's files, hard links counted once),
// plus hash, installer, base_python and python_version. It is always written
// atomically (temp file, fsync, rename). Ensure and release update last_used.
//
// # Atomicity
//
// An environment is built in Dir/.tmp-*/env and renamed to Dir/<env_hash>
// only once it is complete, metadata included, so Dir/<env_hash> either does
// not exist or is complete: a crash, a failed install, a timeout or a
// cancellation mid-build never leaves a half-built environment there. Since
// virtual environments record their own path in a few text files (the
// activate scripts, the shebangs of console scripts, pyvenv.cfg), the build
// rewrites the temporary path to the final one in bin/ and pyvenv.cfg before
// the rename; bin/python itself needs no rewriting. Deletion first renames
// the environment to Dir/.trash-* and then removes it. New removes the
// .tmp-* and .trash-* leftovers of a crashed process; the lock on Dir/.lock
// makes sure no other live Manager (in this or another process) owns Dir,
// whose builds would otherwise be mistaken for leftovers.
//
// An environment is reused only if it was built for the same base
// interpreter path and Python version and its bin/python still exists; an
// environment built for an older base (after an upgrade of the worker's
// Python) is rebuilt on the next Ensure and, being unused, eventually evicted.
//
// # Eviction
//
// After each build (and in New), when the environments' total size exceeds
// Config.MaxBytes, the least recently used ones are deleted until it does
// not, except those in use: an environment is in use from Ensure until the
// caller calls release, and one being built is never a candidate. If only
// environments in use remain, the total stays above MaxBytes (a warning is
// logged) until a later eviction.
package envs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of Config's zero values.
const (
	DefaultMaxBytes = 10 << 30
	DefaultTimeout  = 10 * time.Minute
)

// File names inside Dir and inside an environment.
const (
	MetaFile      = "casparian-env.json"
	LockfileName  = "casparian-requirements.txt"
	BasePthFile   = "_casparian_base.pth"
	lockName      = ".lock"
	tmpPrefix     = ".tmp-"
	trashPrefix   = ".trash-"
	outputTailMax = 8 << 10
	probeTimeout  = time.Minute
)

// Config configures a Manager.
type Config struct {
	// Dir is the root directory; the environment with hash N lives in Dir/N.
	// Required; created if missing.
	Dir string
	// BasePython is the interpreter whose packages the environments see.
	// Required (a path, or a name looked up on PATH).
	BasePython string
	// MaxBytes is the total size beyond which least recently used
	// environments are evicted. Default 10 GiB.
	MaxBytes int64
	// UV is the path of uv: "" looks it up on PATH (and falls back to pip
	// if it is not there), "-" never uses uv.
	UV string
	// Timeout bounds one environment build. Default 10 min.
	Timeout time.Duration
	// Logger receives builds, evictions and cleanups. nil discards.
	Logger *slog.Logger
}

// Env describes one complete environment.
type Env struct {
	Hash      string
	Created   time.Time
	LastUsed  time.Time
	SizeBytes int64
	// Python is the environment's interpreter, Dir/<Hash>/bin/python.
	Python string
}

// InstallError is returned when the installer (pip or uv) fails to install
// the lockfile's requirements, or does not finish within Config.Timeout.
type InstallError struct {
	// Command is the installer's command line, shell-quoted.
	Command string
	// Output is the tail (about the last 8 KiB) of its combined stdout and stderr.
	Output string
	// Err is the process's error (an *exec.ExitError), or a timeout that
	// wraps context.DeadlineExceeded.
	Err error
}

func (e *InstallError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "python env: installing the plugin's requirements failed: %v\n  command: %s\n", e.Err, e.Command)
	if last := lastLines(e.Output, 6, 1500); last != "" {
		b.WriteString("  output (end):\n")
		for _, l := range strings.Split(last, "\n") {
			b.WriteString("    " + l + "\n")
		}
	}
	if errors.Is(e.Err, context.DeadlineExceeded) {
		b.WriteString("  the install did not finish in time: check that the package index (PyPI, or PIP_INDEX_URL / UV_INDEX_URL) is reachable from this worker, or raise the build timeout")
	} else {
		b.WriteString("  check the requirement names and versions in the plugin's lockfile (pip requirements format, e.g. \"six==1.16.0\"), and that the package index (PyPI, or PIP_INDEX_URL / UV_INDEX_URL) is reachable from this worker")
	}
	return b.String()
}

func (e *InstallError) Unwrap() error { return e.Err }

// Manager builds, hands out and evicts the environments under one directory.
// It is safe for concurrent use. Only one Manager (in any process) may own a
// directory at a time.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	installer string // "uv" or "pip"
	base      baseInfo
	lockFile  *os.File

	closeCtx context.Context
	closeFn  context.CancelFunc
	builds   sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	inUse    map[string]int
	building map[string]*build

	metaMu sync.Mutex // serializes read-modify-write of metadata files

	onBuild func(hash string) // test hook, called when a build starts
}

type build struct {
	done  chan struct{}
	err   error
	retry bool // the builder's own ctx ended it: waiters try again
}

// baseInfo is what New learns about the base interpreter.
type baseInfo struct {
	Version    string   `json:"version"`
	IsVenv     bool     `json:"venv"`
	VenvSites  []string `json:"venv_sites"`
	SystemSite bool     `json:"system_site"`
	Pip        bool     `json:"pip"`
	Ensurepip  bool     `json:"ensurepip"`
	VenvModule bool     `json:"venv_module"`
}

// probe runs under `python -I` and reports what the base interpreter sees.
const probe = `import importlib.util as u, json, os, site, sys
venv = sys.prefix != sys.base_prefix
found = lambda m: u.find_spec(m) is not None
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "venv": venv,
    "venv_sites": [p for p in site.getsitepackages([sys.prefix]) if os.path.isdir(p) and p in sys.path] if venv else [],
    "system_site": (not venv) or any(p in sys.path for p in site.getsitepackages([sys.base_prefix])),
    "pip": found("pip"), "ensurepip": found("ensurepip"), "venv_module": found("venv"),
}))`

type metadata struct {
	Hash          string    `json:"hash"`
	Created       time.Time `json:"created"`
	LastUsed      time.Time `json:"last_used"`
	SizeBytes     int64     `json:"size_bytes"`
	Installer     string    `json:"installer"`
	BasePython    string    `json:"base_python"`
	PythonVersion string    `json:"python_version"`
}

// New checks the configuration, takes ownership of Dir, removes the leftovers
// of crashed builds and deletions, asks the base interpreter what it sees,
// and evicts environments beyond MaxBytes.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("python envs: Config.Dir is required")
	}
	if cfg.BasePython == "" {
		return nil, errors.New("python envs: Config.BasePython is required")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("python envs: %w", err)
	}
	cfg.Dir = dir
	// Not EvalSymlinks: a venv's bin/python is a symlink, and resolving it
	// would lose the venv.
	py, err := exec.LookPath(cfg.BasePython)
	if err != nil {
		return nil, fmt.Errorf("python envs: base interpreter %q not found: %w", cfg.BasePython, err)
	}
	if cfg.BasePython, err = filepath.Abs(py); err != nil {
		return nil, fmt.Errorf("python envs: %w", err)
	}
	installer := "pip"
	switch cfg.UV {
	case "-":
		cfg.UV = ""
	case "":
		if p, err := exec.LookPath("uv"); err == nil {
			cfg.UV, installer = p, "uv"
		}
	default:
		p, err := exec.LookPath(cfg.UV)
		if err != nil {
			return nil, fmt.Errorf("python envs: uv %q not found: %w (leave Config.UV empty to use pip when uv is absent)", cfg.UV, err)
		}
		cfg.UV, installer = p, "uv"
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("python envs: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("python envs: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("python envs: %s is in use by another worker (or another Manager in this one); give each worker its own directory", dir)
		}
		return nil, fmt.Errorf("python envs: lock %s: %w", dir, err)
	}

	m := &Manager{cfg: cfg, log: log, installer: installer, lockFile: lf,
		inUse: map[string]int{}, building: map[string]*build{}}
	m.closeCtx, m.closeFn = context.WithCancel(context.Background())
	fail := func(err error) (*Manager, error) {
		m.closeFn()
		lf.Close()
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	out, err := m.command(ctx, cfg.BasePython, "-I", "-c", probe).Output()
	cancel()
	if err != nil {
		msg := err.Error()
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			msg = lastLines(string(ee.Stderr), 5, 1000)
		}
		return fail(fmt.Errorf("python envs: base interpreter %s does not run: %s", cfg.BasePython, msg))
	}
	if err := json.Unmarshal(out, &m.base); err != nil || m.base.Version == "" {
		return fail(fmt.Errorf("python envs: base interpreter %s: unexpected probe output %q", cfg.BasePython, out))
	}
	if installer == "pip" && (!m.base.VenvModule || (!m.base.Pip && !m.base.Ensurepip)) {
		return fail(fmt.Errorf("python envs: base interpreter %s cannot create environments without uv: it lacks the venv module, or both pip and ensurepip (on Debian/Ubuntu: apt install python3-venv; or install uv)", cfg.BasePython))
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return fail(fmt.Errorf("python envs: %w", err))
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, tmpPrefix) || strings.HasPrefix(n, trashPrefix) {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				log.Warn("python envs: cannot remove leftover", "path", filepath.Join(dir, n), "err", err)
			} else {
				log.Info("python envs: removed leftover of an interrupted build or deletion", "path", filepath.Join(dir, n))
			}
		}
	}
	log.Debug("python envs: ready", "dir", dir, "base_python", cfg.BasePython, "python_version", m.base.Version,
		"installer", installer, "base_is_venv", m.base.IsVenv, "system_site", m.base.SystemSite)
	m.evict()
	return m, nil
}

// Close cancels the builds in progress, waits for them to end and releases
// Dir. Environments stay on disk. Ensure fails after Close.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.closeFn()
	m.builds.Wait()
	return m.lockFile.Close() // closing the descriptor releases the flock
}

// Installer reports "uv" or "pip".
func (m *Manager) Installer() string { return m.installer }

// Dir returns the absolute root directory.
func (m *Manager) Dir() string { return m.cfg.Dir }

// Hash returns the env_hash of a lockfile: the lowercase hex SHA-256 of its bytes.
func Hash(lockfile string) string {
	sum := sha256.Sum256([]byte(lockfile))
	return hex.EncodeToString(sum[:])
}

func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (m *Manager) envDir(h string) string { return filepath.Join(m.cfg.Dir, h) }
func (m *Manager) python(h string) string {
	return filepath.Join(m.cfg.Dir, h, "bin", "python")
}

// Ensure returns the interpreter of the environment for lockfile, building
// it first if it does not exist, and marks the environment in use until
// release is called (release is idempotent). envHash must equal
// Hash(lockfile). Concurrent calls for one hash build it once; the others
// wait, and ctx bounds their wait. The builder's ctx (and Config.Timeout)
// bounds the build; if the builder's ctx ends it, a waiter builds instead.
// A failed install returns an *InstallError.
func (m *Manager) Ensure(ctx context.Context, envHash, lockfile string) (python string, release func(), err error) {
	if !validHash(envHash) {
		return "", nil, fmt.Errorf("python envs: env hash %q is not a lowercase hex SHA-256", envHash)
	}
	if got := Hash(lockfile); got != envHash {
		return "", nil, fmt.Errorf("python envs: env hash %s does not match the lockfile (its SHA-256 is %s); the plugin's lockfile and env_hash disagree", envHash, got)
	}
	for {
		if err := ctx.Err(); err != nil {
			return "", nil, fmt.Errorf("python envs: waiting for env %s: %w", short(envHash), err)
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return "", nil, errors.New("python envs: manager is closed")
		}
		if b := m.building[envHash]; b != nil {
			m.mu.Unlock()
			select {
			case <-b.done:
			case <-ctx.Done():
				return "", nil, fmt.Errorf("python envs: waiting for env %s to be built: %w", short(envHash), ctx.Err())
			}
			if b.err != nil && !b.retry {
				return "", nil, b.err
			}
			continue
		}
		if _, ok := m.usable(envHash); ok {
			m.inUse[envHash]++
			m.mu.Unlock()
			m.touch(envHash)
			return m.python(envHash), m.releaser(envHash), nil
		}
		b := &build{done: make(chan struct{})}
		m.building[envHash] = b
		m.builds.Add(1)
		m.mu.Unlock()

		err := m.build(ctx, envHash, lockfile)

		m.mu.Lock()
		delete(m.building, envHash)
		if err == nil {
			m.inUse[envHash]++
		}
		b.err, b.retry = err, err != nil && ctx.Err() != nil
		close(b.done)
		m.mu.Unlock()
		m.builds.Done()
		if err != nil {
			return "", nil, err
		}
		m.evict()
		return m.python(envHash), m.releaser(envHash), nil
	}
}

func (m *Manager) releaser(h string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			m.touch(h) // while still in use, so eviction cannot race the write
			m.mu.Lock()
			if m.inUse[h]--; m.inUse[h] <= 0 {
				delete(m.inUse, h)
			}
			m.mu.Unlock()
		})
	}
}

// Has reports whether the environment exists, complete and usable with the
// current base interpreter.
func (m *Manager) Has(envHash string) bool {
	if !validHash(envHash) {
		return false
	}
	_, ok := m.usable(envHash)
	return ok
}

// InUse reports how many callers hold the environment (Ensure without release).
func (m *Manager) InUse(envHash string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.inUse[envHash]
}

// List returns the complete environments with their metadata, most recently
// used first.
func (m *Manager) List() ([]Env, error) {
	metas, err := m.readAll()
	if err != nil {
		return nil, err
	}
	envs := make([]Env, 0, len(metas))
	for _, md := range metas {
		envs = append(envs, Env{Hash: md.Hash, Created: md.Created, LastUsed: md.LastUsed,
			SizeBytes: md.SizeBytes, Python: m.python(md.Hash)})
	}
	sort.SliceStable(envs, func(i, j int) bool { return envs[i].LastUsed.After(envs[j].LastUsed) })
	return envs, nil
}

// usable reads the environment's metadata and checks that it was built for
// the current base interpreter and that its interpreter exists.
func (m *Manager) usable(h string) (metadata, bool) {
	md, err := readMeta(m.envDir(h))
	if err != nil || md.Hash != h || md.BasePython != m.cfg.BasePython || md.PythonVersion != m.base.Version {
		return md, false
	}
	if _, err := os.Stat(m.python(h)); err != nil {
		return md, false
	}
	return md, true
}

// readAll returns the metadata of every environment directory under Dir.
func (m *Manager) readAll() ([]metadata, error) {
	entries, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("python envs: %w", err)
	}
	var out []metadata
	for _, e := range entries {
		if !e.IsDir() || !validHash(e.Name()) {
			continue
		}
		md, err := readMeta(filepath.Join(m.cfg.Dir, e.Name()))
		if err != nil || md.Hash != e.Name() {
			continue
		}
		out = append(out, md)
	}
	return out, nil
}

func readMeta(envDir string) (metadata, error) {
	var md metadata
	b, err := os.ReadFile(filepath.Join(envDir, MetaFile))
	if err != nil {
		return md, err
	}
	if err := json.Unmarshal(b, &md); err != nil {
		return md, fmt.Errorf("%s: %w", filepath.Join(envDir, MetaFile), err)
	}
	return md, nil
}

// writeMeta writes the metadata file atomically: temp file, fsync, rename.
func writeMeta(envDir string, md metadata) error {
	b, err := json.MarshalIndent(md, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(envDir, MetaFile+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(envDir, MetaFile))
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// touch sets last_used to now. Failures are logged: they only make eviction
// less accurate.
func (m *Manager) touch(h string) {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	dir := m.envDir(h)
	md, err := readMeta(dir)
	if err == nil {
		md.LastUsed = time.Now().UTC()
		err = writeMeta(dir, md)
	}
	if err != nil {
		m.log.Warn("python envs: cannot update last_used", "env_hash", h, "err", err)
	}
}

// evict deletes least recently used environments, not in use and not being
// built, while the total exceeds MaxBytes.
func (m *Manager) evict() {
	m.mu.Lock()
	metas, err := m.readAll()
	if err != nil {
		m.mu.Unlock()
		m.log.Warn("python envs: eviction skipped", "err", err)
		return
	}
	var total int64
	for _, md := range metas {
		total += md.SizeBytes
	}
	if total <= m.cfg.MaxBytes {
		m.mu.Unlock()
		return
	}
	sort.SliceStable(metas, func(i, j int) bool { return metas[i].LastUsed.Before(metas[j].LastUsed) })
	type victim struct {
		md    metadata
		trash string
	}
	var victims []victim
	for _, md := range metas {
		if total <= m.cfg.MaxBytes {
			break
		}
		if m.inUse[md.Hash] > 0 || m.building[md.Hash] != nil {
			continue
		}
		trash, err := m.moveToTrash(md.Hash)
		if err != nil {
			m.log.Warn("python envs: cannot evict", "env_hash", md.Hash, "err", err)
			continue
		}
		total -= md.SizeBytes
		victims = append(victims, victim{md, trash})
	}
	m.mu.Unlock()

	for _, v := range victims {
		if err := os.RemoveAll(v.trash); err != nil {
			m.log.Warn("python envs: cannot remove evicted env", "path", v.trash, "err", err)
		}
		m.log.Info("python envs: evicted least recently used env", "env_hash", v.md.Hash,
			"size_bytes", v.md.SizeBytes, "last_used", v.md.LastUsed)
	}
	if total > m.cfg.MaxBytes {
		m.log.Warn("python envs: total size exceeds MaxBytes but the remaining envs are in use",
			"total_bytes", total, "max_bytes", m.cfg.MaxBytes)
	}
}

// moveToTrash renames Dir/<h> to a fresh Dir/.trash-* path. Call with m.mu held.
func (m *Manager) moveToTrash(h string) (string, error) {
	trash, err := os.MkdirTemp(m.cfg.Dir, trashPrefix)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(trash, h)
	if err := os.Rename(m.envDir(h), dst); err != nil {
		os.Remove(trash)
		return "", err
	}
	return trash, nil
}

// build creates the environment in a temporary directory and renames it to
// Dir/<h> once complete.
func (m *Manager) build(ctx context.Context, h, lockfile string) (err error) {
	if m.onBuild != nil {
		m.onBuild(h)
	}
	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	defer context.AfterFunc(m.closeCtx, cancel)()

	tmp, err := os.MkdirTemp(m.cfg.Dir, tmpPrefix+h[:12]+"-")
	if err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			m.log.Warn("python envs: cannot remove build directory", "path", tmp, "err", rerr)
		}
	}()
	env := filepath.Join(tmp, "env") // does not exist yet: uv venv wants a fresh path
	final := m.envDir(h)
	log := m.log.With("env_hash", h, "installer", m.installer)
	log.Info("python envs: building env", "dir", final)
	defer func() {
		if err != nil {
			log.Warn("python envs: build failed", "duration", time.Since(start).Round(time.Millisecond), "err", err)
		}
	}()

	// 1. The virtual environment.
	var args []string
	if m.installer == "uv" {
		args = []string{m.cfg.UV, "venv"}
		if m.base.SystemSite {
			args = append(args, "--system-site-packages")
		}
		args = append(args, "--python", m.cfg.BasePython, env)
	} else {
		args = []string{m.cfg.BasePython, "-m", "venv"}
		if m.base.SystemSite {
			args = append(args, "--system-site-packages")
		}
		if m.base.Pip {
			args = append(args, "--without-pip")
		}
		args = append(args, env)
	}
	if out, err := m.run(bctx, args); err != nil {
		if cerr := m.ctxErr(ctx, bctx, h); cerr != nil {
			return cerr
		}
		return fmt.Errorf("python envs: creating the virtual environment failed: %w\n  command: %s\n%s",
			err, shellJoin(args), indent(lastLines(out, 10, 4000)))
	}
	python := filepath.Join(env, "bin", "python")

	// 2. The base venv's packages, when the base is a venv.
	if len(m.base.VenvSites) > 0 {
		out, err := m.command(bctx, python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").Output()
		if err != nil {
			if cerr := m.ctxErr(ctx, bctx, h); cerr != nil {
				return cerr
			}
			return fmt.Errorf("python envs: the new environment's interpreter %s does not run: %w", python, err)
		}
		var pth bytes.Buffer
		pth.WriteString("# Written by casparian: the base interpreter's packages (" + m.cfg.BasePython + ").\n")
		for _, d := range m.base.VenvSites {
			q, _ := json.Marshal(d) // a JSON string is a valid Python string literal
			pth.WriteString("import site; site.addsitedir(" + string(q) + ")\n")
		}
		purelib := strings.TrimSpace(string(out))
		if err := os.MkdirAll(purelib, 0o755); err != nil {
			return fmt.Errorf("python envs: %w", err)
		}
		if err := os.WriteFile(filepath.Join(purelib, BasePthFile), pth.Bytes(), 0o644); err != nil {
			return fmt.Errorf("python envs: %w", err)
		}
	}

	// 3. The requirements.
	lockPath := filepath.Join(env, LockfileName)
	if err := os.WriteFile(lockPath, []byte(lockfile), 0o644); err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	if m.installer == "uv" {
		args = []string{m.cfg.UV, "pip", "install", "--python", python, "-r", lockPath}
	} else {
		args = []string{python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", lockPath}
	}
	if out, err := m.run(bctx, args); err != nil {
		if ctx.Err() != nil || m.closeCtx.Err() != nil {
			return m.ctxErr(ctx, bctx, h)
		}
		if bctx.Err() != nil {
			err = fmt.Errorf("timed out after %s (Config.Timeout): %w", m.cfg.Timeout, context.DeadlineExceeded)
		}
		return &InstallError{Command: shellJoin(args), Output: out, Err: err}
	}

	// 4. Make it valid at its final path, measure it, describe it, move it.
	if err := relocate(env, final); err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	size, err := dirSize(env)
	if err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	now := time.Now().UTC()
	md := metadata{Hash: h, Created: now, LastUsed: now, SizeBytes: size, Installer: m.installer,
		BasePython: m.cfg.BasePython, PythonVersion: m.base.Version}
	if err := writeMeta(env, md); err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	if err := m.ctxErr(ctx, bctx, h); err != nil {
		return err
	}
	m.mu.Lock()
	var trash string
	if _, err := os.Lstat(final); err == nil {
		// An unusable env (built for another base interpreter, or damaged):
		// never handed out, so never in use.
		trash, err = m.moveToTrash(h)
		if err != nil {
			m.mu.Unlock()
			return fmt.Errorf("python envs: replace unusable env: %w", err)
		}
	}
	err = os.Rename(env, final)
	m.mu.Unlock()
	if trash != "" {
		os.RemoveAll(trash)
	}
	if err != nil {
		return fmt.Errorf("python envs: %w", err)
	}
	if d, err := os.Open(m.cfg.Dir); err == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	log.Info("python envs: env built", "duration", time.Since(start).Round(time.Millisecond), "size_bytes", size)
	return nil
}

// ctxErr explains why a build's context ended, or returns nil if it has not.
func (m *Manager) ctxErr(ctx, bctx context.Context, h string) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("python envs: building env %s: %w", short(h), ctx.Err())
	case m.closeCtx.Err() != nil:
		return fmt.Errorf("python envs: building env %s: manager closed: %w", short(h), context.Canceled)
	case bctx.Err() != nil:
		return fmt.Errorf("python envs: building env %s timed out after %s (Config.Timeout): %w", short(h), m.cfg.Timeout, context.DeadlineExceeded)
	}
	return nil
}

// command prepares a child process: its own process group (killed whole on
// cancellation, since pip starts build backends), Dir as working directory
// (so no project file of the worker's directory applies) and a cleaned
// environment.
func (m *Manager) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = m.cfg.Dir
	cmd.Env = childEnv(os.Environ())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs args and returns the tail of its combined output.
func (m *Manager) run(ctx context.Context, args []string) (string, error) {
	out := &tailBuffer{max: outputTailMax}
	cmd := m.command(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	err := cmd.Run()
	m.log.Debug("python envs: ran", "command", shellJoin(args), "duration", time.Since(start).Round(time.Millisecond), "err", err)
	return out.String(), err
}

var droppedEnv = map[string]bool{"PYTHONPATH": true, "PYTHONHOME": true, "PYTHONSTARTUP": true,
	"VIRTUAL_ENV": true, "PIP_USER": true, "PIP_TARGET": true, "PIP_PREFIX": true, "PIP_ROOT": true,
	"PYTHONNOUSERSITE": true}

func childEnv(environ []string) []string {
	out := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !droppedEnv[k] {
			out = append(out, kv)
		}
	}
	return append(out, "PYTHONNOUSERSITE=1")
}

// relocate rewrites the build path to the final path in the text files of
// bin/ (activate scripts, console script shebangs) and in pyvenv.cfg.
func relocate(env, final string) error {
	from, to := []byte(env), []byte(final)
	fix := func(path string) error {
		fi, err := os.Lstat(path)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, from) || bytes.IndexByte(b, 0) >= 0 {
			return nil
		}
		return os.WriteFile(path, bytes.ReplaceAll(b, from, to), fi.Mode().Perm())
	}
	if err := fix(filepath.Join(env, "pyvenv.cfg")); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(env, "bin"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := fix(filepath.Join(env, "bin", e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// dirSize sums the apparent sizes of the files under dir (symlinks not
// followed), counting hard links (uv links from its cache) once.
func dirSize(dir string) (int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			k := inode{uint64(st.Dev), uint64(st.Ino)}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += fi.Size()
		return nil
	})
	return total, err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > t.max {
		b = b[len(b)-t.max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:] // start at a line
		}
	}
	return string(b)
}

// lastLines returns the last n non-blank lines of s, at most max bytes.
func lastLines(s string, n, max int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	var keep []string
	size := 0
	for i := len(lines) - 1; i >= 0 && len(keep) < n; i-- {
		l := strings.TrimRight(lines[i], " \r\t")
		if strings.TrimSpace(l) == "" {
			continue
		}
		if size+len(l) > max && len(keep) > 0 {
			break
		}
		size += len(l)
		keep = append(keep, l)
	}
	for i, j := 0, len(keep)-1; i < j; i, j = i+1, j-1 {
		keep[i], keep[j] = keep[j], keep[i]
	}
	return strings.Join(keep, "\n")
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// shellJoin quotes args for a POSIX shell.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		safe := a != ""
		for _, c := range a {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("@%+=:,./_-", c)) {
				safe = false
				break
			}
		}
		if safe {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
