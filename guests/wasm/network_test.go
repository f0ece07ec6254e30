package wasm_test

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/host/guest"
)

// TestSandboxNetwork: a module has no sockets on the host. Go's wasip1 port
// answers net.Dial and net.Listen from an in-process fake network, so a TCP
// dial to a live host listener fails with "Connection refused", a UDP dial
// succeeds but its write fails with "Connection reset by peer", and a
// listener exists only inside the module (a dial from the module reaches
// it, one from the host does not). None of it reaches the host, and the
// next job runs.
func TestSandboxNetwork(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	ctx := context.Background()
	start := time.Now()

	// Live listeners on the host, counting what reaches them.
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tcp.Close()
		t.Fatal(err)
	}
	var accepted, received atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := tcp.Accept()
			if err != nil {
				return // closed below
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return // closed below
			}
			received.Add(1)
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			tcp.Close()
			udp.Close()
			wg.Wait()
		}
	}
	defer stop()
	tcpAddr, udpAddr := tcp.Addr().String(), udp.LocalAddr().String()

	t.Run("tcp dial", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "dial", "network": "tcp", "addr": tcpAddr})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		want := "dial tcp " + tcpAddr + ": address " + tcpAddr + ": connect: Connection refused"
		if ge.Message != want {
			t.Errorf("message %q, want %q", ge.Message, want)
		}
		if !strings.Contains(ge.Hint, "no other file, directory, network") {
			t.Errorf("hint %q does not say the sandbox has no network", ge.Hint)
		}
		if msg := guest.JobError(42, err); !strings.HasPrefix(msg, "[Job 42] PLUGIN_ERROR: "+want) {
			t.Errorf("job error %q", msg)
		}
	})
	t.Run("udp dial and write", func(t *testing.T) {
		// The dial succeeds (it sends nothing); the write fails.
		_, err := e.run(ctx, inst, map[string]any{"mode": "dial", "network": "udp", "addr": udpAddr})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		want := regexp.MustCompile(`^write udp 127\.0\.0\.1:\d+->` + regexp.QuoteMeta(udpAddr) + `: write: Connection reset by peer$`)
		if !want.MatchString(ge.Message) {
			t.Errorf("message %q, want %s", ge.Message, want)
		}
		if !strings.Contains(ge.Hint, "no other file, directory, network") {
			t.Errorf("hint %q does not say the sandbox has no network", ge.Hint)
		}
	})
	t.Run("listen on the host listener's port", func(t *testing.T) {
		// On the host this port is taken; inside the module it is free.
		rec, err := e.run(ctx, inst, map[string]any{"mode": "listen", "addr": tcpAddr})
		if err != nil {
			t.Fatal(guest.JobError(42, err))
		}
		logged(t, rec.LogText("sdk"), "listening addr="+tcpAddr)
	})
	t.Run("dial the module's own listener", func(t *testing.T) {
		// The module now listens on tcpAddr itself: its dial connects to
		// that, not to the host.
		if _, err := e.run(ctx, inst, map[string]any{"mode": "dial", "network": "tcp", "addr": tcpAddr}); err != nil {
			t.Fatal(guest.JobError(42, err))
		}
	})
	t.Run("listen on a free port", func(t *testing.T) {
		free, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := free.Addr().String()
		free.Close()
		rec, err := e.run(ctx, inst, map[string]any{"mode": "listen", "addr": addr})
		if err != nil {
			t.Fatal(guest.JobError(42, err))
		}
		logged(t, rec.LogText("sdk"), "listening addr="+addr)
		// The module is warm and keeps its listener open; the host cannot
		// reach it.
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("the host connected to %s, the module's listener", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("host dial to the module's listener: %v, want connection refused", err)
		}
	})

	// The host is fine: the next job runs.
	rec, err := e.run(ctx, inst, nil)
	if err != nil || rec.Rows("rows") != 15 {
		t.Fatalf("run after the network attempts: %v, %d rows", err, rec.Rows("rows"))
	}

	// Anything sent would have arrived by now (loopback); give stragglers a
	// moment, then count.
	time.Sleep(200 * time.Millisecond)
	stop()
	if n := accepted.Load(); n != 0 {
		t.Errorf("the host TCP listener accepted %d connections", n)
	}
	if n := received.Load(); n != 0 {
		t.Errorf("the host UDP socket received %d datagrams", n)
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// logged checks that the run's log contains want.
func logged(t *testing.T, log, want string) {
	t.Helper()
	if !strings.Contains(log, want) {
		t.Errorf("the log does not contain %q:\n%s", want, log)
	}
}
