package sandbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/rlimit"
	"github.com/casparianflow/casparian/internal/testenv"
)

// requireSandbox fails the test when this Linux machine lacks what the
// sandbox relies on (CI has both); it skips only where there is no cgroup
// filesystem at all or no Landlock.
func requireSandbox(t *testing.T) Status {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		t.Skip("no /sys/fs/cgroup on this machine")
	}
	st := Check(nil)
	if st.LandlockABI < 1 {
		t.Skip("the kernel has no Landlock")
	}
	if st.CgroupVersion == 0 {
		t.Fatalf("no usable pids cgroup: %s", st.CgroupReason)
	}
	return st
}

// run starts cmd in a sandbox with scratch dir dir and waits for it.
func run(t *testing.T, opts Options, dir string, cmd *exec.Cmd) (*Guest, string, error) {
	t.Helper()
	g, err := New(opts, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if ok, err := g.Wrap(cmd, rlimit.Limits{OpenFiles: 100}); !ok || err != nil {
		t.Fatalf("wrap: %v %v", ok, err)
	}
	// A file, not a pipe: cmd.Wait must not wait for processes that
	// outlive the guest and hold its output.
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return g, string(out), err
}

// The guest writes in its scratch directory, not outside it; it reads
// anywhere; its limits are those given to Wrap.
func TestLandlock(t *testing.T) {
	requireSandbox(t)
	dir, outside := t.TempDir(), t.TempDir()
	cmd := exec.Command("/bin/sh", "-c", `echo in > "$1/in" && cat /etc/hostname >/dev/null && ulimit -n && echo out > "$2/out"`, "sh", dir, outside)
	g, out, err := run(t, Options{}, dir, cmd)
	if err == nil {
		t.Fatalf("the write outside succeeded:\n%s", out)
	}
	if !strings.Contains(out, "Permission denied") || !strings.Contains(out, "100") {
		t.Errorf("output:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "in")); err != nil {
		t.Errorf("the write inside failed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "out")); err == nil {
		t.Error("the file outside exists")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// Options.Writable opens more paths.
	cmd = exec.Command("/bin/sh", "-c", `echo out > "$1/out"`, "sh", outside)
	if _, out, err := run(t, Options{Writable: []string{outside, "/nonexistent"}}, dir, cmd); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// A fork bomb stops at MaxProcesses; Close kills what is left and removes
// the cgroup.
func TestForkBomb(t *testing.T) {
	st := requireSandbox(t)
	dir := t.TempDir()
	// Each child sleeps in its own new session, out of reach of a group kill.
	cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 200 ]; do setsid sleep 600 & i=$((i+1)); done; echo started; exit 0`)
	g, out, err := run(t, Options{MaxProcesses: 20}, dir, cmd)
	if g.Cgroup() == "" || !strings.HasPrefix(g.Cgroup(), st.CgroupParent) {
		t.Fatalf("cgroup %q, parent %q", g.Cgroup(), st.CgroupParent)
	}
	t.Logf("exit: %v, output: %.300s", err, out)
	if n := g.ForkFailures(); n == 0 {
		t.Errorf("no fork was refused")
	}
	pids, err := readPids(filepath.Join(g.Cgroup(), "cgroup.procs"))
	if err != nil || len(pids) == 0 || len(pids) > 20 {
		t.Errorf("processes left in the cgroup: %d (%v)", len(pids), err)
	}
	start := time.Now()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("closed in %s", time.Since(start))
	if _, err := os.Stat(g.Cgroup()); !os.IsNotExist(err) {
		t.Errorf("the cgroup is still there: %v", err)
	}
	for _, pid := range pids {
		if !testenv.ProcessGone(pid) {
			t.Errorf("process %d survived", pid)
		}
	}
	if dirs, pids := Leftovers(); len(dirs) != 0 || len(pids) != 0 {
		t.Errorf("leftovers: %v %v", dirs, pids)
	}
}

// A missing guest command fails Wrap, as it would fail a direct start.
func TestWrapMissing(t *testing.T) {
	g, err := New(Options{}, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	cmd := exec.Command("/nonexistent/python")
	if ok, err := g.Wrap(cmd, rlimit.Limits{}); ok || err == nil {
		t.Fatalf("wrapped a missing command: %v %v", ok, err)
	}
}

func TestParse(t *testing.T) {
	dir := t.TempDir()
	mi := filepath.Join(dir, "mountinfo")
	os.WriteFile(mi, []byte(`31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,cpu,pids
41 31 0:38 / /sys/fs/cgroup/uni\040fied rw,relatime - cgroup2 cgroup2 rw
`), 0o644)
	v2, v1, err := readMounts(mi)
	if err != nil || v2 == nil || v1 == nil {
		t.Fatal(v2, v1, err)
	}
	if v2.point != "/sys/fs/cgroup/uni fied" || v1.point != "/sys/fs/cgroup/pids" || v1.root != "/docker/abc" {
		t.Errorf("%+v %+v", v2, v1)
	}
	cg := filepath.Join(dir, "cgroup")
	os.WriteFile(cg, []byte("9:name=systemd:/\n8:cpu,pids:/docker/abc/x\n0::/user.slice\n"), 0o644)
	p2, p1, err := readCgroupPaths(cg)
	if err != nil || p2 != "/user.slice" || p1 != "/docker/abc/x" {
		t.Fatal(p2, p1, err)
	}
	if d, ok := cgroupDir(*v1, p1); !ok || d != "/sys/fs/cgroup/pids/x" {
		t.Errorf("%q %v", d, ok)
	}
	if _, ok := cgroupDir(*v1, "/other"); ok {
		t.Error("a cgroup outside the mount's root")
	}
	if d, _ := cgroupDir(*v2, p2); d != "/sys/fs/cgroup/uni fied/user.slice" {
		t.Errorf("%q", d)
	}
}

// The cgroups of a host that died are removed, with what still ran there,
// when the next host detects its cgroups.
func TestRemoveStale(t *testing.T) {
	st := requireSandbox(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	base := filepath.Dir(st.CgroupParent)
	host := filepath.Join(base, hostDirPrefix+strconv.Itoa(dead.Process.Pid))
	g := filepath.Join(host, "g7")
	if err := os.MkdirAll(g, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(g); os.Remove(host) })
	orphan := exec.Command("sleep", "600")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	defer orphan.Process.Kill()
	if err := os.WriteFile(filepath.Join(g, "cgroup.procs"), []byte(strconv.Itoa(orphan.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	(&cgroupManager{version: st.CgroupVersion, base: base}).removeStale()
	if err := orphan.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("the orphan ended with %v, want killed", err)
	}
	if _, err := os.Stat(host); !os.IsNotExist(err) {
		t.Errorf("the stale cgroup is still there: %v", err)
	}
}
