package conformance

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/sdk"
)

// TestGuest runs every case of the suite as a subtest of t, against the
// harness's kind: the certification of a guest type. opts may give one
// Options value.
func TestGuest(t *testing.T, h Harness, opts ...Options) {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.TempDir == "" {
		o.TempDir = t.TempDir()
	}
	e, err := newEnv(context.Background(), h, o.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	for _, c := range Cases() {
		if !e.selected(c.Name) {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			r := e.runCase(c)
			if !r.Passed {
				t.Errorf("%s: %s\n(the case demands: %s)", h.Kind, r.Message, c.Doc)
			}
		})
	}
}

// PluginOptions tune TestPlugin. Zero values mean the defaults.
type PluginOptions struct {
	// Config is the configuration every run gets.
	Config map[string]any
	// Timeout bounds each run. Default 1 minute.
	Timeout time.Duration
	// Deterministic also runs every input a second time and requires the
	// same batches (for plugins whose output depends only on their input).
	Deterministic bool
}

// TestPlugin is for plugin authors: it loads p in rt and runs it on every
// input, failing t when a run fails, emits to an invalid topic, changes a
// topic's schema, or leaves Arrow memory unreleased (rt must allocate from
// the allocator the test gives it through mem; pass nil to skip that check).
// It logs what each input produced. With Deterministic, outputs of two runs
// must be equal.
func TestPlugin(t *testing.T, rt guest.Runtime, mem *memory.CheckedAllocator, p guest.Plugin, inputs []string, opts ...PluginOptions) {
	t.Helper()
	var o PluginOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if len(inputs) == 0 {
		t.Fatal("conformance.TestPlugin: no input files")
	}
	inst, err := rt.Load(context.Background(), p)
	if err != nil {
		t.Fatalf("load plugin %s: %s", p.Name, guest.JobError(0, err))
	}
	defer inst.Close(context.Background())
	runOnce := func(i int, in string) (*Recorder, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
		defer cancel()
		rec := NewRecorder()
		err := inst.Run(ctx, guest.Input{JobID: int64(i + 1), FileVersionID: int64(i + 1), Path: in, Config: o.Config}, rec)
		if err != nil {
			t.Errorf("%s: %s", in, guest.JobError(int64(i+1), err))
			return rec, false
		}
		for _, topic := range rec.Topics() {
			if err := sdk.ValidateTopic(topic); err != nil {
				t.Errorf("%s: %v", in, err)
			}
		}
		return rec, true
	}
	for i, in := range inputs {
		rec, ok := runOnce(i, in)
		if ok {
			var parts []string
			for _, topic := range rec.Topics() {
				parts = append(parts, fmt.Sprintf("%s: %d rows in %d batches", topic, rec.Rows(topic), len(rec.Batches(topic))))
			}
			sort.Strings(parts)
			t.Logf("%s -> %s", in, strings.Join(parts, ", "))
			if o.Deterministic {
				rec2, ok2 := runOnce(i, in)
				if ok2 {
					if diff := sameOutput(rec, rec2); diff != "" {
						t.Errorf("%s: a second run differs: %s", in, diff)
					}
				}
				rec2.Release()
			}
		}
		rec.Release()
	}
	if mem != nil {
		if n := mem.CurrentAlloc(); n != 0 {
			t.Errorf("%d bytes of Arrow memory not released after the runs", n)
		}
	}
}

// sameOutput describes how two recordings differ ("" when they do not).
func sameOutput(a, b *Recorder) string {
	ta, tb := a.Topics(), b.Topics()
	if strings.Join(ta, ",") != strings.Join(tb, ",") {
		return fmt.Sprintf("topics %v, then %v", ta, tb)
	}
	for _, topic := range ta {
		ba, bb := a.Batches(topic), b.Batches(topic)
		if a.Rows(topic) != b.Rows(topic) {
			return fmt.Sprintf("topic %s: %d rows, then %d", topic, a.Rows(topic), b.Rows(topic))
		}
		if len(ba) == len(bb) {
			for i := range ba {
				if !ba[i].Schema().Equal(bb[i].Schema()) {
					return fmt.Sprintf("topic %s batch %d: schema differs", topic, i)
				}
				for c := 0; c < int(ba[i].NumCols()); c++ {
					if !array.Equal(ba[i].Column(c), bb[i].Column(c)) {
						return fmt.Sprintf("topic %s batch %d column %s differs", topic, i, ba[i].Schema().Field(c).Name)
					}
				}
			}
		}
	}
	return ""
}
