// Package testenv gives tests the real parts they need: the project's Python
// interpreter (with pyarrow), and a recording guest.Output.
package testenv

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/casparianflow/casparian/host/guest"

	_ "modernc.org/sqlite" // the "sqlite" driver
)

// RepoRoot returns the module root.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	pyOnce sync.Once
	pyPath string
	pyErr  string
)

// Python returns the interpreter tests run plugins with: $CASPARIAN_PYTHON,
// else the project venv. It fails the test (never skips) when there is none
// with pyarrow: `make test` creates it.
func Python(t testing.TB) string {
	t.Helper()
	pyOnce.Do(func() {
		p := os.Getenv("CASPARIAN_PYTHON")
		if p == "" {
			p = filepath.Join(RepoRoot(), ".venv", "bin", "python")
		}
		out, err := exec.Command(p, "-c", "import pyarrow, pandas; print(pyarrow.__version__)").CombinedOutput()
		if err != nil {
			pyErr = "no usable Python at " + p + " (" + strings.TrimSpace(string(out)) + "); run `make venv` or set CASPARIAN_PYTHON"
			return
		}
		pyPath = p
	})
	if pyPath == "" {
		t.Fatal(pyErr)
	}
	return pyPath
}

// Recorder is a guest.Output that keeps what a plugin emits. Records are
// retained; call Release when done.
type Recorder struct {
	mu      sync.Mutex
	Batches map[string][]arrow.RecordBatch
	Order   []string // topic of each Emit, in order
	Logs    []guest.LogRecord
	// EmitHook, if set, is called before recording and may fail the emit.
	EmitHook func(topic string, rec arrow.RecordBatch) error
}

var _ guest.Output = (*Recorder)(nil)

func (r *Recorder) Emit(_ context.Context, topic string, rec arrow.RecordBatch) error {
	if r.EmitHook != nil {
		if err := r.EmitHook(topic, rec); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Batches == nil {
		r.Batches = map[string][]arrow.RecordBatch{}
	}
	rec.Retain()
	r.Batches[topic] = append(r.Batches[topic], rec)
	r.Order = append(r.Order, topic)
	return nil
}

func (r *Recorder) Log(l guest.LogRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Logs = append(r.Logs, l)
}

// Rows counts rows recorded for a topic.
func (r *Recorder) Rows(topic string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, b := range r.Batches[topic] {
		n += b.NumRows()
	}
	return n
}

// LogText joins the messages of the recorded logs of one stream ("" = all).
func (r *Recorder) LogText(stream string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, l := range r.Logs {
		if stream == "" || l.Stream == stream {
			b.WriteString(l.Message)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// Release releases every retained record.
func (r *Recorder) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, bs := range r.Batches {
		for _, b := range bs {
			b.Release()
		}
	}
	r.Batches = nil
}

// ProcessGone reports whether pid no longer runs (absent or a zombie).
func ProcessGone(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

// SQLiteCount returns the number of rows of table in the SQLite file db.
func SQLiteCount(t testing.TB, db, table string) int64 {
	t.Helper()
	conn, err := sql.Open("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n int64
	if err := conn.QueryRow(`SELECT count(*) FROM "` + table + `"`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
