// Package guestlog turns the byte streams of a plugin (stdout, stderr) into
// log lines, and keeps the last lines for the job's error report. The
// Python, go-plugin and WASM guests share it.
package guestlog

import (
	"bytes"
	"strings"
	"sync"
	"unicode/utf8"
)

// DefaultMaxLine is the longest line a Writer hands on; longer ones are cut
// into pieces of that size.
const DefaultMaxLine = 64 << 10

// Writer splits a byte stream into lines (without "\n" and a trailing "\r",
// invalid UTF-8 replaced) and hands each to Emit. A line longer than Max is
// cut: its first Max bytes are emitted, the rest up to its newline dropped,
// however the bytes arrive. It is safe for concurrent use; Close emits a
// last line that had no newline.
type Writer struct {
	// Emit receives each line. Required.
	Emit func(string)
	// Touch, if set, is called on every Write (activity for an idle timer).
	Touch func()
	// Max is the longest line; 0 means DefaultMaxLine.
	Max int

	mu   sync.Mutex
	buf  []byte
	skip bool // dropping the rest of a line that was cut
}

func (w *Writer) limit() int {
	if w.Max > 0 {
		return w.Max
	}
	return DefaultMaxLine
}

// Write implements io.Writer; it never fails.
func (w *Writer) Write(b []byte) (int, error) {
	if w.Touch != nil {
		w.Touch()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n, limit := len(b), w.limit()
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		switch {
		case w.skip && i < 0:
			return n, nil
		case w.skip:
			w.skip = false
		case i < 0:
			room := limit - len(w.buf)
			if len(b) <= room {
				w.buf = append(w.buf, b...)
				return n, nil
			}
			w.buf = append(w.buf, b[:room]...)
			w.flush()
			w.skip = true
			return n, nil
		default:
			w.buf = append(w.buf, b[:min(i, limit-len(w.buf))]...)
			w.flush()
		}
		b = b[i+1:]
	}
	return n, nil
}

// Close emits a last line that had no newline.
func (w *Writer) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.flush()
	}
}

func (w *Writer) flush() {
	line := strings.ToValidUTF8(strings.TrimRight(string(w.buf), "\r"), "\uFFFD")
	w.buf = w.buf[:0]
	w.Emit(line)
}

// Tail keeps the last n lines (each cut at 2,000 bytes).
type Tail struct {
	mu    sync.Mutex
	n     int
	lines []string
}

// NewTail returns a Tail of n lines.
func NewTail(n int) *Tail { return &Tail{n: n} }

// Add appends a line, dropping the oldest beyond n.
func (t *Tail) Add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, Truncate(s, 2000))
	if len(t.lines) > t.n {
		t.lines = t.lines[len(t.lines)-t.n:]
	}
}

// String returns the lines kept, joined by newlines.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// Truncate cuts s to at most n bytes, at a rune boundary, and marks the cut
// with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
