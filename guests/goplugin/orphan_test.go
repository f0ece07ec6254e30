package goplugin_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

// The test binary re-executed with helperHostEnv=<plugin path> is a host: it
// leaves one plugin process warm, starts a job that hangs in a second one
// (which starts a child of its own), prints "PIDS warm busy child" and waits
// to be killed.
const (
	helperHostEnv   = "CF_GOPLUGIN_HELPER_HOST"
	helperNoPdeath  = "CF_GOPLUGIN_HELPER_NOPDEATHSIG"
	helperTempDir   = "CF_GOPLUGIN_HELPER_TMP"
	helperHostLimit = 60 * time.Second
)

func helperHost() {
	fail := func(err error) {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	time.AfterFunc(helperHostLimit, func() { os.Exit(2) }) // never outlive a lost test
	if os.Getenv(helperNoPdeath) != "" {
		*goplugin.NoPdeathsig = true
	}
	rt, err := goplugin.New(goplugin.Config{TempDir: os.Getenv(helperTempDir)})
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	inst, err := rt.Load(ctx, guest.Plugin{Name: "testplugin", Kind: guest.KindGoPlugin, Path: os.Getenv(helperHostEnv)})
	if err != nil {
		fail(err)
	}
	pids := make(chan int, 3)
	rec := &hookedRecorder{onLog: func(l guest.LogRecord) {
		for _, a := range l.Attrs {
			if a.Key == "pid" || a.Key == "child_pid" {
				pid, _ := strconv.Atoi(a.Value.String())
				pids <- pid
			}
		}
	}}
	go func() {
		err := inst.Run(ctx, guest.Input{Path: "/dev/null", Config: map[string]any{"mode": "hang", "child": true}}, rec)
		fail(fmt.Errorf("hanging job ended: %v", err))
	}()
	busy, child := <-pids, <-pids
	// The hanging job holds its process, so this one starts another, left warm.
	if err := inst.Run(ctx, guest.Input{Path: "/dev/null", Config: map[string]any{"mode": "emit", "batches": 0}}, rec); err != nil {
		fail(err)
	}
	warm := <-pids
	fmt.Printf("PIDS %d %d %d\n", warm, busy, child)
	select {}
}

// No plugin process, warm or busy, nor what a plugin started, outlives a
// host killed with SIGKILL.
func TestNoOrphanAfterHostSIGKILL(t *testing.T) {
	bin := testPlugin(t)
	for _, c := range []struct {
		name string
		env  string
	}{
		{"pdeathsig and stdin", ""},
		{"stdin watch alone", helperNoPdeath + "=1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			// The killed host cannot remove its runtime's dir: the test does.
			tmp, err := os.MkdirTemp("", "cf-gpt-") // short: Unix socket paths live under it
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(tmp) })
			cmd.Env = append(os.Environ(), helperHostEnv+"="+bin, helperTempDir+"="+tmp)
			if c.env != "" {
				cmd.Env = append(cmd.Env, c.env)
			}
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}()
			lines := make(chan string, 1)
			go func() {
				s := bufio.NewScanner(out)
				for s.Scan() {
					lines <- s.Text()
				}
				close(lines)
			}()
			var line string
			select {
			case line = <-lines:
			case <-time.After(30 * time.Second):
				t.Fatal("helper host did not report its plugins' pids")
			}
			var warm, busy, child int
			if _, err := fmt.Sscanf(line, "PIDS %d %d %d", &warm, &busy, &child); err != nil {
				t.Fatalf("helper host said %q", line)
			}
			if warm == busy {
				t.Fatalf("the warm and the busy plugin are one process %d", warm)
			}
			t.Cleanup(func() { // if the test fails, do not leave the orphans behind
				for _, pid := range []int{warm, busy, child} {
					if !testenv.ProcessGone(pid) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			for _, pid := range []int{warm, busy, child} {
				if testenv.ProcessGone(pid) {
					t.Fatalf("process %d is not running before the host is killed", pid)
				}
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			start := time.Now()
			waitGone(t, 5*time.Second, warm, busy, child)
			// A new runtime in the same temp dir removes the dead host's dir.
			if ents, _ := os.ReadDir(tmp); len(ents) != 1 {
				t.Fatalf("the killed host left %d dirs in its temp dir", len(ents))
			}
			rt, err := goplugin.New(goplugin.Config{TempDir: tmp})
			if err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(tmp); len(ents) != 1 {
				t.Errorf("after New: %d dirs in the temp dir, want only the new runtime's", len(ents))
			}
			rt.Close(context.Background())
			t.Logf("plugins (warm %d, busy %d) and the busy one's child %d gone %s after the host's SIGKILL",
				warm, busy, child, time.Since(start).Round(time.Millisecond))
		})
	}
}
