package guestlog

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestWriter(t *testing.T) {
	var lines []string
	w := &Writer{Emit: func(s string) { lines = append(lines, s) }}
	w.Write([]byte("a\r\nb"))
	w.Write([]byte("c\n"))
	w.Write(make([]byte, DefaultMaxLine+10)) // cut: the rest of the line dropped
	w.Write([]byte("dropped too\nnext \xff"))
	w.Write([]byte("line"))
	w.Close()
	if len(lines) != 4 || lines[0] != "a" || lines[1] != "bc" || len(lines[2]) != DefaultMaxLine || lines[3] != "next \uFFFDline" {
		t.Errorf("%d lines: %q", len(lines), lines)
	}

	// The same cut whether the line comes whole or in pieces.
	for _, pieces := range [][]string{{"abcdefghij\nkl\n"}, {"abcde", "fghij\nkl\n"}, {"ab", "cd", "ef", "ghij\n", "kl", "\n"}} {
		touched := 0
		lines = nil
		w = &Writer{Max: 4, Touch: func() { touched++ }, Emit: func(s string) { lines = append(lines, s) }}
		for _, p := range pieces {
			w.Write([]byte(p))
		}
		w.Close()
		if touched != len(pieces) || strings.Join(lines, "|") != "abcd|kl" {
			t.Errorf("Max 4, pieces %q: %q, touched %d", pieces, lines, touched)
		}
	}
}

func TestTail(t *testing.T) {
	tl := NewTail(2)
	for _, l := range []string{"one", "two", strings.Repeat("é", 1500)} {
		tl.Add(l)
	}
	got := strings.Split(tl.String(), "\n")
	if len(got) != 2 || got[0] != "two" || !strings.HasSuffix(got[1], "…") || !utf8.ValidString(got[1]) || len(got[1]) > 2000+len("…") {
		t.Errorf("tail %q", tl.String())
	}
}

func TestTruncate(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{{"abc", 3, "abc"}, {"abcd", 3, "abc…"}, {"aé", 2, "a…"}, {"éé", 3, "é…"}} {
		if got := Truncate(c.s, c.n); got != c.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

// FuzzLines drives the splitting of a plugin's stdout and stderr into log
// lines: whatever the plugin writes, in whatever pieces, a line is at most
// the cap (DefaultMaxLine; a small one as well) of output, 3 times that once
// invalid UTF-8 is replaced, and the writer holds at most the cap.
func FuzzLines(f *testing.F) {
	f.Add([]byte("hello\nworld\r\nno newline"), []byte{3, 1, 7})
	f.Add(bytes.Repeat([]byte("x"), 200), []byte{5, 9})
	f.Add(append(bytes.Repeat([]byte{0xff}, 100), '\n'), []byte{1})
	f.Add([]byte(strings.Repeat("é", 60)+"\n"+strings.Repeat("a", 47)+"\n"), []byte{2, 3})
	f.Fuzz(func(t *testing.T, out []byte, cuts []byte) {
		for _, max := range []int{48, 0} {
			limit := max
			if limit == 0 {
				limit = DefaultMaxLine
			}
			var lines []string
			w := &Writer{Max: max, Emit: func(l string) { lines = append(lines, l) }}
			rest, i := out, 0
			for len(rest) > 0 {
				n := len(rest)
				if len(cuts) > 0 {
					n = min(n, 1+int(cuts[i%len(cuts)])*int(cuts[(i+1)%len(cuts)]))
					i++
				}
				if k, err := w.Write(rest[:n]); k != n || err != nil {
					t.Fatalf("Write = %d, %v", k, err)
				}
				if len(w.buf) > limit {
					t.Fatalf("the writer holds %d bytes (cap %d)", len(w.buf), limit)
				}
				rest = rest[n:]
			}
			w.Close()
			total := 0
			for _, l := range lines {
				if len(l) > 3*limit || strings.ContainsRune(l, '\n') || !utf8.ValidString(l) {
					t.Fatalf("line of %d bytes (cap %d)", len(l), limit)
				}
				total += len(l)
			}
			if total > 3*len(out) {
				t.Fatalf("%d bytes of lines from %d bytes of output", total, len(out))
			}
		}
	})
}
