package main_test

import (
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
)

// A peer announcing a 4 GiB frame and 100 connections that never greet leave
// the sentinel process serving a real worker normally, without the memory a
// 4 GiB allocation would take.
func TestClusterHostilePeers(t *testing.T) {
	c := newCluster(t)
	c.startSentinel()
	addr := strings.TrimPrefix(c.tcp, "tcp://")

	var silent []net.Conn
	for range 100 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("silent client: %v", err)
		}
		silent = append(silent, conn)
	}
	defer func() {
		for _, s := range silent {
			s.Close()
		}
	}()

	// A ZMTP 3.0 client: NULL greeting, READY as a DEALER, then a message
	// frame whose 8-byte length announces 4 GiB, and a trickle of body.
	huge, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer huge.Close()
	greeting := make([]byte, 64)
	greeting[0], greeting[9], greeting[10] = 0xFF, 0x7F, 3
	copy(greeting[12:], "NULL")
	ready := append([]byte{5}, "READY"...)
	ready = append(ready, byte(len("Socket-Type")))
	ready = append(ready, "Socket-Type"...)
	ready = binary.BigEndian.AppendUint32(ready, uint32(len("DEALER")))
	ready = append(ready, "DEALER"...)
	msg := append(greeting, 0x04, byte(len(ready)))
	msg = append(msg, ready...)
	msg = append(msg, 0x02) // long message frame, no MORE
	msg = binary.BigEndian.AppendUint64(msg, 4<<30)
	msg = append(msg, make([]byte, 4096)...)
	if _, err := huge.Write(msg); err != nil {
		t.Fatalf("hostile write: %v", err)
	}

	// A real worker still registers and runs a real job promptly.
	in := writeInputs(t, filepath.Join(c.dir, "in"), 2, func(int) string { return "0 6" })
	ids := c.enqueue("slow", filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py"), in)
	start := time.Now()
	c.startWorker("worker-a", c.tcp)
	c.waitDone(int64(len(ids)), 60*time.Second)
	t.Logf("2 jobs done %s after the worker started, with 100 silent clients and a 4 GiB frame announced", time.Since(start).Round(time.Millisecond))
	c.expectOnePerJob("", ids)

	m := scrape(t, c.metrics)
	if got := m[`casparian_transport_dropped_connections_total{reason="oversized_frame"}`]; got < 1 {
		t.Errorf("oversized frame drops = %v, want ≥ 1", got)
	}
	// The process never held the 4 GiB (nor anything close).
	if rss := m["process_resident_memory_bytes"]; rss <= 0 || rss > 512<<20 {
		t.Errorf("sentinel RSS = %.0f MiB, want well under 512 MiB", rss/(1<<20))
	}
	if peak := vmHWM(t, c.sentinel.cmd.Process.Pid); peak > 512<<20 {
		t.Errorf("sentinel peak RSS = %d MiB, want well under 512 MiB", peak>>20)
	}
}

// vmHWM is a process's peak resident set size in bytes (Linux).
func vmHWM(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatalf("read /proc status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
