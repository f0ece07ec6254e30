package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hostDirPrefix starts the name of a host's cgroup directory,
// casparian-<host pid>; the guests' cgroups are its children g<n>.
const hostDirPrefix = "casparian-"

// cgroupManager makes the guests' cgroups under <base>/casparian-<pid>.
type cgroupManager struct {
	version int    // 1 or 2; 0: no usable pids cgroup
	base    string // the cgroup directory the host's directory is made in
	reason  string // why none is usable

	mu   sync.Mutex
	refs int // guest cgroups alive; the host's directory exists while > 0
	seq  int
}

var (
	cgOnce sync.Once
	cgMgr  *cgroupManager
)

// cgroups detects, once per process, where guests' cgroups can be made,
// and removes the cgroups that hosts which died left behind.
func cgroups(log *slog.Logger) *cgroupManager {
	cgOnce.Do(func() {
		cgMgr = detectCgroups()
		if cgMgr.version == 0 {
			log.Warn("sandbox: no usable pids cgroup for plugin processes; fork protection relies on RLIMIT_NPROC, which root ignores",
				"reason", cgMgr.reason)
			return
		}
		log.Debug("sandbox: plugin processes get a pids cgroup each", "cgroup_version", cgMgr.version, "parent", cgMgr.hostDir())
	})
	return cgMgr
}

func (m *cgroupManager) hostDir() string {
	return filepath.Join(m.base, hostDirPrefix+strconv.Itoa(os.Getpid()))
}

// mount is a cgroup filesystem mount: its mount point and the path of its
// root within the hierarchy.
type mount struct{ point, root string }

// detectCgroups finds the host's own cgroup (or EnvCgroupParent) on a
// cgroup v2 mount with the pids controller, else on cgroup v1's pids
// hierarchy, and checks that children with a pids limit can be made there.
func detectCgroups() *cgroupManager {
	if p := os.Getenv(EnvCgroupParent); p != "" {
		v := 1
		if _, err := os.Stat(filepath.Join(p, "cgroup.controllers")); err == nil {
			v = 2
		}
		return probe(p, v)
	}
	v2, v1, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		return &cgroupManager{reason: err.Error()}
	}
	path2, path1, err := readCgroupPaths("/proc/self/cgroup")
	if err != nil {
		return &cgroupManager{reason: err.Error()}
	}
	var reasons []string
	for _, c := range []struct {
		version int
		m       *mount
		path    string
	}{{2, v2, path2}, {1, v1, path1}} {
		if c.m == nil || c.path == "" {
			reasons = append(reasons, fmt.Sprintf("no cgroup v%d pids hierarchy", c.version))
			continue
		}
		dir, ok := cgroupDir(*c.m, c.path)
		if !ok {
			reasons = append(reasons, fmt.Sprintf("cgroup v%d: the host's cgroup %s is outside the mount at %s", c.version, c.path, c.m.point))
			continue
		}
		m := probe(dir, c.version)
		if m.version != 0 {
			return m
		}
		reasons = append(reasons, m.reason)
	}
	return &cgroupManager{reason: strings.Join(reasons, "; ")}
}

// cgroupDir is the directory of cgroup path (as /proc/self/cgroup names it)
// under mount m.
func cgroupDir(m mount, path string) (string, bool) {
	if m.root == "/" {
		return filepath.Join(m.point, path), true
	}
	rel, ok := strings.CutPrefix(path, m.root)
	if !ok || (rel != "" && rel[0] != '/') {
		return "", false
	}
	return filepath.Join(m.point, rel), true
}

// probe checks that guests' cgroups with a pids limit can be made under dir.
func probe(dir string, version int) *cgroupManager {
	fail := func(format string, a ...any) *cgroupManager {
		return &cgroupManager{reason: fmt.Sprintf("cgroup v%d %s: ", version, dir) + fmt.Sprintf(format, a...)}
	}
	if version == 2 {
		ctl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			return fail("%v", err)
		}
		if !hasWord(string(ctl), "pids") {
			return fail("the pids controller is not available (cgroup.controllers: %q)", strings.TrimSpace(string(ctl)))
		}
		if err := enablePids(dir); err != nil {
			return fail("cannot enable the pids controller for its children: %v "+
				"(a cgroup with processes cannot delegate controllers; set %s to a cgroup without processes)", err, EnvCgroupParent)
		}
	}
	m := &cgroupManager{version: version, base: dir}
	m.removeStale()
	// Make (and remove) the host's directory and a guest's once.
	cg, err := m.create(DefaultMaxProcesses)
	if err != nil {
		return fail("%v", err)
	}
	if err := cg.destroy(); err != nil {
		return fail("%v", err)
	}
	return m
}

// enablePids makes sure children of the v2 cgroup dir get the pids controller.
func enablePids(dir string) error {
	ctl, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	if hasWord(string(ctl), "pids") {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+pids"), 0)
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// readMounts finds the cgroup v2 mount and the cgroup v1 mount of the pids
// controller in a mountinfo file.
func readMounts(file string) (v2, v1 *mount, err error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		m := &mount{point: unescapeMount(a[4]), root: unescapeMount(a[3])}
		switch {
		case b[0] == "cgroup2" && v2 == nil:
			v2 = m
		case b[0] == "cgroup" && v1 == nil && hasWord(strings.ReplaceAll(b[2], ",", " "), "pids"):
			v1 = m
		}
	}
	return v2, v1, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readCgroupPaths reads the process's cgroup v2 path ("0::/path") and its
// cgroup v1 pids path ("N:pids:/path", possibly with other controllers).
func readCgroupPaths(file string) (v2, v1 string, err error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		} else if hasWord(strings.ReplaceAll(parts[1], ",", " "), "pids") {
			v1 = parts[2]
		}
	}
	return v2, v1, nil
}

// cgroup is one guest's cgroup.
type cgroup struct {
	m   *cgroupManager
	dir string
}

// create makes a guest's cgroup with pids.max = max.
func (m *cgroupManager) create(max int) (*cgroup, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	host := m.hostDir()
	if m.refs == 0 {
		if err := os.Mkdir(host, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("make the host's cgroup: %w", err)
		}
		if m.version == 2 {
			if err := enablePids(host); err != nil {
				_ = unix.Rmdir(host)
				return nil, fmt.Errorf("enable the pids controller in %s: %w", host, err)
			}
		}
	}
	m.seq++
	dir := filepath.Join(host, "g"+strconv.Itoa(m.seq))
	if err := os.Mkdir(dir, 0o755); err != nil {
		m.releaseLocked()
		return nil, fmt.Errorf("make a plugin's cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), []byte(strconv.Itoa(max)), 0); err != nil {
		_ = unix.Rmdir(dir)
		m.releaseLocked()
		return nil, fmt.Errorf("set pids.max of %s: %w", dir, err)
	}
	m.refs++
	return &cgroup{m: m, dir: dir}, nil
}

// releaseLocked removes the host's directory when no guest cgroup is left.
func (m *cgroupManager) releaseLocked() {
	if m.refs == 0 {
		_ = unix.Rmdir(m.hostDir())
	}
}

// forkFailures reads the "max" count of pids.events: forks refused by pids.max.
func (c *cgroup) forkFailures() int64 {
	b, err := os.ReadFile(filepath.Join(c.dir, "pids.events"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "max "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// destroyTimeout bounds the wait for a cgroup's processes to die.
const destroyTimeout = 10 * time.Second

// destroy kills every process in the cgroup and removes it.
func (c *cgroup) destroy() error {
	err := killAndRemove(c.dir, c.m.version, destroyTimeout)
	c.m.mu.Lock()
	c.m.refs--
	c.m.releaseLocked()
	c.m.mu.Unlock()
	return err
}

// killAndRemove SIGKILLs the processes of cgroup dir until none is left
// (pids.max bounds what a fork bomb can add meanwhile) and removes it.
func killAndRemove(dir string, version int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if version == 2 {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) // Linux 5.14+
	}
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("sandbox: list the processes of %s: %w", dir, err)
		}
		if len(pids) == 0 {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				return nil
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("sandbox: remove cgroup %s: %w", dir, err)
			}
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox: %d processes of cgroup %s survived SIGKILL for %s", len(pids), dir, timeout)
		}
		time.Sleep(wait)
	}
}

func readPids(file string) ([]int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// removeStale removes the cgroups that hosts which died (SIGKILL leaves no
// chance to clean up) left under the base, killing what still runs there.
// A reused pid only keeps a stale directory longer. It runs before this
// host makes any, so a directory with this host's pid (a host that had the
// same pid, e.g. pid 1 of a restarted container) is stale too.
func (m *cgroupManager) removeStale() {
	ents, err := os.ReadDir(m.base)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), hostDirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid <= 0 {
			continue
		}
		if err := unix.Kill(pid, 0); pid != os.Getpid() && !errors.Is(err, syscall.ESRCH) {
			continue
		}
		host := filepath.Join(m.base, e.Name())
		subs, _ := os.ReadDir(host)
		for _, s := range subs {
			if s.IsDir() && strings.HasPrefix(s.Name(), "g") {
				_ = killAndRemove(filepath.Join(host, s.Name()), m.version, 2*time.Second)
			}
		}
		_ = unix.Rmdir(host)
	}
}

// leftovers lists this host's guest cgroups that still exist and the
// processes in them.
func (m *cgroupManager) leftovers() (dirs []string, pids []int) {
	if m == nil || m.version == 0 {
		return nil, nil
	}
	host := m.hostDir()
	subs, _ := os.ReadDir(host)
	for _, s := range subs {
		if s.IsDir() && strings.HasPrefix(s.Name(), "g") {
			dir := filepath.Join(host, s.Name())
			dirs = append(dirs, dir)
			p, _ := readPids(filepath.Join(dir, "cgroup.procs"))
			pids = append(pids, p...)
		}
	}
	return dirs, pids
}
