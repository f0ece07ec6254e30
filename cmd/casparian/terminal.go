package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
)

// terminal shows progress on stderr: a redrawn bar on a terminal, one line
// per finished file otherwise. Log records go through it so they never
// garble the bar.
type terminal struct {
	mu       sync.Mutex
	w        io.Writer
	mode     string // bar, lines, none
	total    int
	finished int
	failed   int
	rows     int64
	started  time.Time
	active   bool
	tick     chan struct{} // closed to stop the redraw ticker
	ticked   sync.WaitGroup
}

func newTerminal(w io.Writer, mode string) *terminal {
	if mode == "auto" {
		mode = "lines"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	return &terminal{w: w, mode: mode}
}

func (t *terminal) start(total int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total, t.started, t.active = total, time.Now(), true
	t.draw()
	if t.mode == "bar" {
		t.tick = make(chan struct{})
		t.ticked.Add(1)
		go func() {
			defer t.ticked.Done()
			tk := time.NewTicker(250 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-t.tick:
					return
				case <-tk.C:
					t.mu.Lock()
					t.draw()
					t.mu.Unlock()
				}
			}
		}()
	}
}

func (t *terminal) stop() {
	if t.tick != nil {
		close(t.tick)
		t.ticked.Wait()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mode == "bar" && t.active {
		t.draw()
		fmt.Fprintln(t.w)
	}
	t.active = false
}

func (t *terminal) done(job host.Job, rc host.Receipt) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finished++
	t.rows += rc.TotalRows()
	if rc.Err != nil {
		t.failed++
	}
	switch t.mode {
	case "lines":
		if rc.Err != nil {
			fmt.Fprintf(t.w, "FAIL [Job %d] %s: %s\n", job.ID, job.InputPath, firstLine(rc.Err))
		} else {
			fmt.Fprintf(t.w, "ok   [Job %d] %s: %s rows in %s\n", job.ID, job.InputPath, rowsByTopic(rc.Rows), rc.Duration.Round(time.Millisecond))
		}
	case "bar":
		if rc.Err != nil {
			t.clear()
			fmt.Fprintf(t.w, "FAIL [Job %d] %s: %s\n", job.ID, job.InputPath, firstLine(rc.Err))
		}
		t.draw()
	}
}

func (t *terminal) clear() {
	if t.mode == "bar" && t.active {
		fmt.Fprint(t.w, "\r\033[K")
	}
}

func (t *terminal) draw() {
	if t.mode != "bar" || !t.active {
		return
	}
	const width = 30
	filled := 0
	if t.total > 0 {
		filled = width * t.finished / t.total
	}
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	fmt.Fprintf(t.w, "\r\033[K%s %d/%d files  %d failed  %s rows  %s", bar, t.finished, t.total, t.failed,
		humanCount(t.rows), time.Since(t.started).Round(100*time.Millisecond))
}

// handler returns a slog handler that writes above the progress bar.
func (t *terminal) handler(level slog.Level) slog.Handler {
	return slog.NewTextHandler(&logWriter{t: t}, &slog.HandlerOptions{Level: level})
}

type logWriter struct{ t *terminal }

func (l *logWriter) Write(b []byte) (int, error) {
	l.t.mu.Lock()
	defer l.t.mu.Unlock()
	l.t.clear()
	n, err := l.t.w.Write(b)
	l.t.draw()
	return n, err
}

// firstLine is the first line of a job's error, without the "[Job N]" prefix
// (the caller prints the job).
func firstLine(err error) string {
	var jf *host.JobFailure
	if errors.As(err, &jf) {
		err = jf.Err
	}
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func rowsByTopic(rows map[string]int64) string {
	if len(rows) == 0 {
		return "0"
	}
	topics := make([]string, 0, len(rows))
	for t := range rows {
		topics = append(topics, t)
	}
	sort.Strings(topics)
	parts := make([]string, len(topics))
	for i, t := range topics {
		parts[i] = fmt.Sprintf("%s=%d", t, rows[t])
	}
	return strings.Join(parts, " ")
}

func humanCount(n int64) string {
	switch {
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// printSummary prints the run's summary table and returns the exit code.
func printSummary(w io.Writer, plugin guest.Plugin, outDir string, jobs []host.Job, receipts []host.Receipt, elapsed time.Duration, interrupted, fullErrors bool) int {
	type topicStat struct {
		rows  int64
		files int
	}
	stats := map[string]*topicStat{}
	var ok, failed, skipped int
	var failures []string
	for i, rc := range receipts {
		switch {
		case rc.Status == "":
			skipped++
		case rc.Err != nil:
			failed++
			failures = append(failures, fmt.Sprintf("  %s\n    %s", jobs[i].InputPath, detailLines(rc.Err, 12, fullErrors)))
		default:
			ok++
		}
		for _, a := range rc.Artifacts {
			s := stats[a.Topic]
			if s == nil {
				s = &topicStat{}
				stats[a.Topic] = s
			}
			s.rows += a.Rows
			s.files++
		}
	}
	abs, _ := filepath.Abs(outDir)
	fmt.Fprintf(w, "\nPlugin   %s (%s)\n", plugin.Path, plugin.Kind)
	fmt.Fprintf(w, "Files    %d total: %d ok, %d failed", len(jobs), ok, failed)
	if skipped > 0 {
		fmt.Fprintf(w, ", %d not run (interrupted)", skipped)
	}
	fmt.Fprintf(w, "  in %s\n", elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "Output   %s\n\n", abs)
	if len(stats) > 0 {
		topics := make([]string, 0, len(stats))
		width := len("total")
		for t := range stats {
			topics = append(topics, t)
			width = max(width, len(t))
		}
		sort.Strings(topics)
		fmt.Fprintf(w, "%-*s  %12s  %8s\n", width, "TOPIC", "ROWS", "OUTPUTS")
		var total int64
		for _, t := range topics {
			fmt.Fprintf(w, "%-*s  %12d  %8d\n", width, t, stats[t].rows, stats[t].files)
			total += stats[t].rows
		}
		fmt.Fprintf(w, "%-*s  %12d\n", width, "total", total)
	} else {
		fmt.Fprintln(w, "No output was written.")
	}
	if len(failures) > 0 {
		fmt.Fprintf(w, "\nFailures (%d):\n%s\n", len(failures), strings.Join(failures, "\n"))
	}
	if failed > 0 || skipped > 0 || interrupted {
		return 1
	}
	return 0
}

// detailLines renders an error for the summary: its first line, then its
// last n lines (the end of a traceback is where the cause is), indented.
func detailLines(err error, n int, full bool) string {
	lines := strings.Split(strings.TrimRight(err.Error(), "\n"), "\n")
	if !full && len(lines) > n+1 {
		skipped := len(lines) - n - 1
		lines = append([]string{lines[0], fmt.Sprintf("… (%d lines skipped; --full-errors shows them)", skipped)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n    ")
}
