package kinds_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance"
	"github.com/casparianflow/casparian/conformance/kinds"
	"github.com/casparianflow/casparian/host/guest"
)

// The same logical plugin in the three kinds (the Python reference plugin,
// and the Go one built as a go-plugin executable and as a WASM module)
// produces identical tables, topic by topic, for every data mode.
func TestDifferential(t *testing.T) {
	cfg := config(t)
	in := filepath.Join(t.TempDir(), "input.txt")
	if err := os.WriteFile(in, []byte("differential\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	modes := []map[string]any{
		{"mode": "types"},
		{"mode": "topics", "n": 8},
		{"mode": "tiny", "batches": 50},
		{"mode": "zero_rows"},
		{"mode": "big", "mb": 4, "rows": 4},
	}
	// tables[kind][mode] = "topic → table as text"
	tables := map[guest.Kind][]map[string]string{}
	for _, kind := range kinds.Kinds {
		h, err := kinds.For(kind, cfg)
		if err != nil {
			t.Fatal(err)
		}
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		rt, err := h.NewRuntime(mem)
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.Plugin()
		if err != nil {
			t.Fatal(err)
		}
		inst, err := rt.Load(context.Background(), p)
		if err != nil {
			t.Fatal(guest.JobError(0, err))
		}
		for _, m := range modes {
			rec := conformance.NewRecorder()
			if err := inst.Run(context.Background(), guest.Input{JobID: 1, Path: in, Config: m}, rec); err != nil {
				t.Fatalf("%s %v: %s", kind, m, guest.JobError(1, err))
			}
			out := map[string]string{}
			for _, topic := range rec.Topics() {
				out[topic] = tableText(rec.Batches(topic))
			}
			tables[kind] = append(tables[kind], out)
			rec.Release()
		}
		inst.Close(context.Background())
		rt.Close(context.Background())
		mem.AssertSize(t, 0)
	}
	ref := guest.KindPython
	for _, kind := range kinds.Kinds[1:] {
		for i, m := range modes {
			want, got := tables[ref][i], tables[kind][i]
			if len(want) == 0 {
				t.Errorf("%v: the %s plugin emitted nothing", m, ref)
			}
			for topic, w := range want {
				if g, ok := got[topic]; !ok {
					t.Errorf("%v: %s emitted no topic %q", m, kind, topic)
				} else if g != w {
					t.Errorf("%v topic %q: %s and %s differ:\n%s:\n%s\n%s:\n%s", m, topic, ref, kind, ref, w, kind, g)
				}
			}
			for topic := range got {
				if _, ok := want[topic]; !ok {
					t.Errorf("%v: %s emitted topic %q, %s did not", m, kind, topic, ref)
				}
			}
		}
	}
}

// tableText renders batches as one table: the schema, then every row,
// value by value (batch boundaries are not part of a table).
func tableText(bs []arrow.RecordBatch) string {
	if len(bs) == 0 {
		return "(no batch)"
	}
	var b strings.Builder
	s := bs[0].Schema()
	for _, f := range s.Fields() {
		fmt.Fprintf(&b, "%s %s nullable=%v | ", f.Name, f.Type, f.Nullable)
	}
	b.WriteString("\n")
	for _, rec := range bs {
		for r := 0; r < int(rec.NumRows()); r++ {
			for _, col := range rec.Columns() {
				v := col.ValueStr(r)
				if bin, ok := col.(*array.Binary); ok && !col.IsNull(r) {
					v = fmt.Sprintf("%d bytes %x..%x", len(bin.Value(r)), headOf(bin.Value(r)), tailOf(bin.Value(r)))
				}
				b.WriteString(v + " | ")
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func headOf(v []byte) []byte { return v[:min(8, len(v))] }
func tailOf(v []byte) []byte { return v[max(0, len(v)-8):] }
