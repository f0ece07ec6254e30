package bridge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var update = flag.Bool("update", false, "rewrite the Go-made golden fixtures")

func goldenPath(name string) string { return filepath.Join("testdata", "golden", name) }

var goldenJSON = []struct {
	file string
	typ  FrameType
	v    any
}{
	{"hello.bin", FrameHello, Hello{Magic: Magic, Version: 1, SDKVersion: "0.1.0", Runtime: "test", PID: 1}},
	{"log.bin", FrameLog, LogMessage{Level: "INFO", Logger: "plugin", Message: "héllo <world> & \"quotes\""}},
	{"error.bin", FrameError, ErrorMessage{Kind: "PLUGIN_ERROR", Type: "ValueError", Message: "boom",
		Traceback: "Traceback (most recent call last):\n  File \"plugin.py\", line 3, in consume\nValueError: boom\n"}},
	{"end.bin", FrameEnd, EndMessage{Batches: 2, Rows: 5}},
}

// peopleRecord builds the record both BATCH fixtures hold.
func peopleRecord(mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "score", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	}, nil)
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	b.Field(0).(*array.Int64Builder).AppendValues([]int64{1, 2, 3}, nil)
	b.Field(1).(*array.StringBuilder).AppendValues([]string{"ann", "", "çé"}, []bool{true, false, true})
	b.Field(2).(*array.Float64Builder).AppendValues([]float64{1.5, 2.5, 0}, []bool{true, true, false})
	return b.NewRecordBatch()
}

func encodeJSONFrame(t *testing.T, typ FrameType, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := NewWriter(&buf).WriteJSON(typ, v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodeGoBatch(t *testing.T) []byte {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	rec := peopleRecord(mem)
	defer rec.Release()
	ipcBytes, err := EncodeIPC(rec.Schema(), rec)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := NewWriter(&buf).WriteBatch("people", ipcBytes); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestGoldenJSONFrames(t *testing.T) {
	for _, g := range goldenJSON {
		t.Run(g.file, func(t *testing.T) {
			got := encodeJSONFrame(t, g.typ, g.v)
			if *update {
				if err := os.WriteFile(goldenPath(g.file), got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(goldenPath(g.file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encoding drifted from %s:\n got %q\nwant %q", g.file, got, want)
			}
			f, err := NewReader(bytes.NewReader(want), Limits{}).Next()
			if err != nil {
				t.Fatal(err)
			}
			if f.Type != g.typ || int(f.Len) != len(want)-HeaderSize {
				t.Fatalf("decoded type %v len %d", f.Type, f.Len)
			}
		})
	}
}

func TestGoldenBatchAndSession(t *testing.T) {
	goBatch := encodeGoBatch(t)
	if *update {
		if err := os.WriteFile(goldenPath("batch_go.bin"), goBatch, 0o644); err != nil {
			t.Fatal(err)
		}
		var session []byte
		for _, name := range []string{"hello.bin", "batch_go.bin", "log.bin", "end.bin"} {
			b, err := os.ReadFile(goldenPath(name))
			if err != nil {
				t.Fatal(err)
			}
			session = append(session, b...)
		}
		if err := os.WriteFile(goldenPath("session.bin"), session, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"batch_go.bin", "batch_py.bin"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(goldenPath(name))
			if err != nil {
				t.Fatal(err)
			}
			if data[0] != byte(FrameBatch) || binary.BigEndian.Uint32(data[1:5]) != uint32(len(data)-HeaderSize) {
				t.Fatalf("bad frame header % x", data[:5])
			}
			checkPeopleFrame(t, bytes.NewReader(data))
		})
	}
	t.Run("session.bin", func(t *testing.T) {
		data, err := os.ReadFile(goldenPath("session.bin"))
		if err != nil {
			t.Fatal(err)
		}
		r := NewReader(bytes.NewReader(data), Limits{})
		var types []FrameType
		for {
			f, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			types = append(types, f.Type)
		}
		want := []FrameType{FrameHello, FrameBatch, FrameLog, FrameEnd}
		if len(types) != len(want) {
			t.Fatalf("frames %v, want %v", types, want)
		}
		for i := range want {
			if types[i] != want[i] {
				t.Fatalf("frames %v, want %v", types, want)
			}
		}
	})
}

func checkPeopleFrame(t *testing.T, r io.Reader) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	f, err := NewReader(r, Limits{}).Next()
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != FrameBatch || f.Topic != "people" {
		t.Fatalf("got %v topic %q", f.Type, f.Topic)
	}
	var rows int64
	n, err := ReadIPC(f.Body, int64(f.Len), mem, func(rec arrow.RecordBatch) error {
		rows += rec.NumRows()
		ids := rec.Column(0).(*array.Int64)
		names := rec.Column(1).(*array.String)
		scores := rec.Column(2).(*array.Float64)
		if ids.Value(0) != 1 || ids.Value(2) != 3 || names.Value(0) != "ann" || !names.IsNull(1) ||
			names.Value(2) != "çé" || scores.Value(1) != 2.5 || !scores.IsNull(2) {
			t.Errorf("unexpected values: %v", rec)
		}
		return nil
	})
	if err != nil || n != 1 || rows != 3 {
		t.Fatalf("batches %d rows %d err %v", n, rows, err)
	}
}

func TestReaderRejects(t *testing.T) {
	cases := []struct {
		name string
		data []byte
		want error
		lim  Limits
	}{
		{"junk", []byte("hello world, not a frame"), ErrUnknownFrame, Limits{}},
		{"short header", []byte{0x01, 0, 0}, ErrTruncated, Limits{}},
		{"short body", []byte{0x05, 0, 0, 0, 10, '{'}, ErrTruncated, Limits{}},
		{"message too large", []byte{0x03, 0x7f, 0xff, 0xff, 0xff}, ErrFrameTooLarge, Limits{}},
		{"batch too large", []byte{0x02, 0, 0, 0x10, 0}, ErrFrameTooLarge, Limits{MaxBatchFrame: 1024}},
		{"batch without topic", []byte{0x02, 0, 0, 0, 1, 0}, ErrTruncated, Limits{}},
		{"empty topic", []byte{0x02, 0, 0, 0, 4, 0, 0, 1, 2}, ErrBadTopic, Limits{}},
		{"topic longer than frame", []byte{0x02, 0, 0, 0, 4, 0, 9, 'a', 'b'}, ErrBadTopic, Limits{}},
		{"traversal topic", append([]byte{0x02, 0, 0, 0, 7, 0, 5}, "../x"+"y"...), ErrBadTopic, Limits{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(c.data), c.lim).Next()
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestInvalidArrowBody(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	var buf bytes.Buffer
	if err := NewWriter(&buf).WriteBatch("t", []byte(strings.Repeat("\xff", 64))); err != nil {
		t.Fatal(err)
	}
	f, err := NewReader(&buf, Limits{}).Next()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ReadIPC(f.Body, int64(f.Len), mem, func(arrow.RecordBatch) error { return nil })
	if !errors.Is(err, ErrInvalidArrow) {
		t.Fatalf("got %v", err)
	}
}

func TestValidateTopic(t *testing.T) {
	for _, ok := range []string{"output", "a.b-c_d", "_x", "T1"} {
		if err := ValidateTopic(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", "a/b", "-x", ".x", "a b", "é", strings.Repeat("a", 256)} {
		if err := ValidateTopic(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
