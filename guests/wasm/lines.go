package wasm

import (
	"bytes"
	"strings"
	"sync"
)

// lineWriter splits a module's stdout or stderr into lines (cut at
// maxLogLine bytes) and hands each to emit.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	emit  func(string)
	touch func() // called on every write, if set
	max   int    // the longest line; 0 means maxLogLine (the fuzz target sets a small one)
}

func (w *lineWriter) limit() int {
	if w.max > 0 {
		return w.max
	}
	return maxLogLine
}

func (w *lineWriter) Write(b []byte) (int, error) {
	if w.touch != nil {
		w.touch()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n, limit := len(b), w.limit()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			room := limit - len(w.buf)
			if len(b) > room {
				w.buf = append(w.buf, b[:room]...)
				w.flush()
				b = b[room:]
				continue
			}
			w.buf = append(w.buf, b...)
			break
		}
		if len(w.buf)+i > limit {
			w.buf = append(w.buf, b[:limit-len(w.buf)]...)
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
	line := strings.ToValidUTF8(strings.TrimRight(string(w.buf), "\r"), "\uFFFD")
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
