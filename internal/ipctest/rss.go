package ipctest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// RSS returns this process's resident set size and its peak since the last
// ResetPeak (VmRSS and VmHWM of /proc/self/status), in bytes.
func RSS() (rss, peak int64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %v", k, err)
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	if rss == 0 || peak == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/self/status")
	}
	return rss, peak, nil
}

// ResetPeak sets the peak RSS back to the current RSS (Linux 4.0 and later:
// "5" to /proc/self/clear_refs).
func ResetPeak() error { return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// RSSWatch measures how far this process's resident set grows above where
// it was when the watch started.
type RSSWatch struct {
	start int64
	reset bool // the peak was reset at the start
}

// StartRSSWatch resets the peak and records the current RSS.
func StartRSSWatch() (*RSSWatch, error) {
	w := &RSSWatch{reset: ResetPeak() == nil}
	rss, _, err := RSS()
	if err != nil {
		return nil, err
	}
	w.start = rss
	return w, nil
}

// Growth returns the peak RSS since the start minus the RSS at the start.
// Without a reset peak (old kernels) it is the current RSS's growth instead.
func (w *RSSWatch) Growth() (int64, error) {
	rss, peak, err := RSS()
	if err != nil {
		return 0, err
	}
	if !w.reset {
		peak = rss
	}
	return peak - w.start, nil
}

// Check fails t when the growth since the start exceeds bound, and returns
// the growth.
func (w *RSSWatch) Check(t testing.TB, bound int64) int64 {
	t.Helper()
	g, err := w.Growth()
	if err != nil {
		t.Fatal(err)
	}
	if g > bound {
		t.Errorf("host RSS grew by %d MiB (bound %d MiB)", g>>20, bound>>20)
	}
	return g
}
