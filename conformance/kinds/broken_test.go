package kinds_test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/conformance/kinds"
	"github.com/casparianflow/casparian/host/guest"
)

// The suite can fail: a guest with a deliberate flaw, wrapped around the
// real go-plugin guest, fails exactly the cases about that flaw, with a
// message a person understands.
func TestBrokenGuestsFail(t *testing.T) {
	cfg := config(t)
	selected := []string{"types/i8", "types/str", "types/dict", "stream/empty", "error/message",
		"error/hang_deadline", "error/cancel_midstream", "lifecycle/no_leak"}
	for _, tc := range []struct {
		flaw string
		fail map[string]string // case → a phrase its message must hold
	}{
		{"drops nulls", map[string]string{
			"types/i8": "row 1 must be null", "types/str": "row 1 must be null", "types/dict": "row 1 must be null"}},
		{"ignores cancellation", map[string]string{
			"error/hang_deadline": "did not return within", "error/cancel_midstream": "did not return within"}},
		{"leaks a process", map[string]string{"lifecycle/no_leak": "child processes still running"}},
	} {
		t.Run(tc.flaw, func(t *testing.T) {
			h := kinds.GoPlugin(cfg)
			b := &broken{flaw: tc.flaw}
			t.Cleanup(b.cleanup)
			inner := h.NewRuntime
			h.NewRuntime = func(mem memory.Allocator) (guest.Runtime, error) {
				rt, err := inner(mem)
				return &brokenRuntime{Runtime: rt, b: b}, err
			}
			rep, err := conformance.Run(context.Background(), h, conformance.Options{
				Only: selected, Grace: 3 * time.Second, TempDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Results) != len(selected) {
				t.Fatalf("%d cases ran, want %d", len(rep.Results), len(selected))
			}
			for _, r := range rep.Results {
				phrase, shouldFail := tc.fail[r.Case]
				switch {
				case shouldFail && r.Passed:
					t.Errorf("%s passed against a guest that %s", r.Case, tc.flaw)
				case shouldFail && !strings.Contains(r.Message, phrase):
					t.Errorf("%s failed, but its message does not say %q: %s", r.Case, phrase, r.Message)
				case !shouldFail && !r.Passed:
					t.Errorf("%s failed against a guest whose only flaw is that it %s: %s", r.Case, tc.flaw, r.Message)
				}
				if !r.Passed {
					t.Logf("%s: %s", r.Case, r.Message)
				}
			}
		})
	}
}

// broken holds a flaw and what it leaked.
type broken struct {
	flaw  string
	mu    sync.Mutex
	procs []*exec.Cmd
}

func (b *broken) cleanup() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.procs {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
}

type brokenRuntime struct {
	guest.Runtime
	b *broken
}

func (r *brokenRuntime) Load(ctx context.Context, p guest.Plugin) (guest.Instance, error) {
	inst, err := r.Runtime.Load(ctx, p)
	if err != nil {
		return nil, err
	}
	if r.b.flaw == "leaks a process" {
		cmd := exec.Command("sleep", "300")
		if err := cmd.Start(); err == nil {
			r.b.mu.Lock()
			r.b.procs = append(r.b.procs, cmd)
			r.b.mu.Unlock()
		}
	}
	return &brokenInstance{Instance: inst, b: r.b}, nil
}

type brokenInstance struct {
	guest.Instance
	b *broken
}

func (i *brokenInstance) Concurrent() bool {
	c, ok := i.Instance.(guest.Concurrent)
	return ok && c.Concurrent()
}

func (i *brokenInstance) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	switch i.b.flaw {
	case "drops nulls":
		out = &nullDropper{Output: out}
	case "ignores cancellation":
		// The plugin is stopped only 15 s after the run's end was asked for.
		late, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		stop := context.AfterFunc(ctx, func() { time.AfterFunc(15*time.Second, cancel) })
		defer stop()
		ctx = late
	}
	return i.Instance.Run(ctx, in, out)
}

// nullDropper forwards batches with every column's validity bitmap removed.
type nullDropper struct{ guest.Output }

func (d *nullDropper) Emit(ctx context.Context, topic string, rec arrow.RecordBatch) error {
	cols := make([]arrow.Array, rec.NumCols())
	for c, col := range rec.Columns() {
		data := col.Data()
		bufs := slices.Clone(data.Buffers())
		if len(bufs) > 0 {
			bufs[0] = nil
		}
		nd := array.NewData(data.DataType(), data.Len(), bufs, data.Children(), 0, data.Offset())
		if dict := data.Dictionary(); dict != nil {
			nd.SetDictionary(dict)
		}
		cols[c] = array.MakeFromData(nd)
		nd.Release()
		defer cols[c].Release()
	}
	out := array.NewRecordBatch(rec.Schema(), cols, rec.NumRows())
	defer out.Release()
	return d.Output.Emit(ctx, topic, out)
}
