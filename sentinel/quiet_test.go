package sentinel

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/protocol"
)

// A worker silent for longer than a lease (stopped, partitioned) gets no new
// job: it would only hold it until the lease expires. Its expired job goes to
// a worker that reports, and the quiet one gets work again once it speaks.
func TestQuietWorkerGetsNoNewJobs(t *testing.T) {
	t.Parallel()
	const lease = 400 * time.Millisecond
	logs := &syncBuffer{}
	e := newEnv(t, envOpt{cfg: func(c *Config) {
		c.Lease = lease
		c.HeartbeatTimeout = time.Minute // never evicted in this test
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}})
	e.plugin("p")
	id := e.job("p")
	stopped := e.worker(workerOpts{ID: "stopped", Caps: []string{"p"}, Slots: 4})
	if got, _ := stopped.dispatch(); got != id {
		t.Fatalf("got job %d, want %d", got, id)
	}
	// Silent from here on: its lease expires, and the requeued job (and a
	// second one) must not go back to it although it has free slots.
	m := e.s.Metrics()
	e.waitMetric("leases_expired_total", m.LeasesExpired, 1)
	stopped.expect(protocol.OpAbort, id)
	id2 := e.job("p")
	stopped.expectNone(protocol.OpDispatch, quiet)
	if !strings.Contains(logs.String(), "silent for longer than a lease") {
		t.Errorf("no log line for the quiet worker:\n%s", logs.String())
	}

	alive := e.worker(workerOpts{ID: "alive", Caps: []string{"p"}, Slots: 1})
	alive.startHeartbeats(50 * time.Millisecond)
	got, d := alive.dispatch()
	if got != id && got != id2 {
		t.Fatalf("alive got job %d, want %d or %d", got, id, id2)
	}
	if got == id && d.Attempt != 2 {
		t.Errorf("requeued job went out as attempt %d, want 2", d.Attempt)
	}
	// The quiet worker speaks again: the other job goes to it.
	stopped.send(protocol.OpHeartbeat, 0, protocol.HeartbeatPayload{Status: protocol.WorkerIdle, Slots: 4})
	other := id2
	if got == id2 {
		other = id
	}
	if got2, _ := stopped.dispatch(); got2 != other {
		t.Fatalf("after reporting again it got job %d, want %d", got2, other)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
