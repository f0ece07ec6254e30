package rlimit

import (
	"os/exec"
	"strings"
	"testing"
)

// Limits applied to a started process are what it sees.
func TestApply(t *testing.T) {
	cmd := exec.Command("sh", "-c", "read x; ulimit -n; ulimit -v; ulimit -f")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := (Limits{OpenFiles: 64, AddressSpace: 512 << 20, FileSize: 1 << 20}).Apply(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	in.Write([]byte("go\n"))
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	// ulimit -v and -f report KiB and 512-byte blocks (dash: KiB for -f too).
	got := strings.Fields(out.String())
	if len(got) != 3 || got[0] != "64" || got[1] != "524288" || (got[2] != "2048" && got[2] != "1024") {
		t.Errorf("limits seen by the process: %q", got)
	}
}
