package goplugin

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

const maxLogLine = 64 << 10

// sdkRecord converts a Log event of the SDK's logger.
func sdkRecord(l *pluginpb.Log) guest.LogRecord {
	rec := guest.LogRecord{Level: slog.Level(l.GetLevel()), Message: l.GetMessage(), Stream: "sdk"}
	for _, a := range l.GetAttrs() {
		rec.Attrs = append(rec.Attrs, slog.String(a.GetKey(), a.GetValue()))
	}
	return rec
}

// parseHclog turns one hclog line into a record: a JSON line (hclog's
// JSONFormat, as go-plugin's and the SDK's loggers write) with its level,
// message, module (as the "logger" attribute) and fields, or a text line
// starting with a [LEVEL] tag. ok is false for any other line.
func parseHclog(line string) (rec guest.LogRecord, ok bool) {
	rec.Stream = "stderr"
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return rec, false
		}
		msg, ok1 := m["@message"].(string)
		lvl, ok2 := m["@level"].(string)
		if !ok1 || !ok2 {
			return rec, false
		}
		rec.Message, rec.Level = msg, hclogLevel(lvl)
		if mod, _ := m["@module"].(string); mod != "" {
			rec.Attrs = append(rec.Attrs, slog.String("logger", mod))
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			if !strings.HasPrefix(k, "@") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			rec.Attrs = append(rec.Attrs, slog.Any(k, m[k]))
		}
		return rec, true
	}
	for _, tag := range []string{"[TRACE]", "[DEBUG]", "[INFO]", "[WARN]", "[ERROR]"} {
		if strings.HasPrefix(line, tag) {
			rec.Level = hclogLevel(strings.Trim(tag, "[]"))
			rec.Message = strings.TrimSpace(strings.TrimPrefix(line, tag))
			return rec, true
		}
	}
	return rec, false
}

func hclogLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "trace":
		return slog.LevelDebug - 4
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// lineWriter splits a byte stream into lines (capped at maxLogLine).
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	emit func(string)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			room := maxLogLine - len(w.buf)
			if len(b) > room {
				w.buf = append(w.buf, b[:room]...)
				w.flush()
				b = b[room:]
				continue
			}
			w.buf = append(w.buf, b...)
			break
		}
		if len(w.buf)+i > maxLogLine {
			w.buf = append(w.buf, b[:maxLogLine-len(w.buf)]...)
		} else {
			w.buf = append(w.buf, b[:i]...)
		}
		w.flush()
		b = b[i+1:]
	}
	return n, nil
}

// Close emits a last line that had no newline.
func (w *lineWriter) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.flush()
	}
}

func (w *lineWriter) flush() {
	line := strings.TrimRight(string(w.buf), "\r")
	w.buf = w.buf[:0]
	w.emit(line)
}

// tail keeps the last n lines.
type tail struct {
	mu    sync.Mutex
	n     int
	lines []string
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(s) > 2000 {
		s = s[:2000] + "…"
	}
	t.lines = append(t.lines, s)
	if len(t.lines) > t.n {
		t.lines = t.lines[len(t.lines)-t.n:]
	}
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
