package filehash

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestSumRemembersAndNotices(t *testing.T) {
	old := RacyWindow
	RacyWindow = 50 * time.Millisecond
	defer func() { RacyWindow = old }()
	p := filepath.Join(t.TempDir(), "artifact")
	if err := os.WriteFile(p, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Within the racy window: read every time.
	n := Reads()
	for range 2 {
		if got, err := Sum(p); err != nil || got != sumOf([]byte("one")) {
			t.Fatalf("Sum = %s, %v", got, err)
		}
	}
	if r := Reads() - n; r != 2 {
		t.Errorf("%d reads within the racy window, want 2", r)
	}
	time.Sleep(100 * time.Millisecond)
	n = Reads()
	for range 3 {
		if got, err := Sum(p); err != nil || got != sumOf([]byte("one")) {
			t.Fatalf("Sum = %s, %v", got, err)
		}
	}
	if r := Reads() - n; r != 1 {
		t.Errorf("%d reads of an unchanged file, want 1", r)
	}
	// A write of the same size is noticed (ctime and mtime move).
	if err := os.WriteFile(p, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Sum(p); err != nil || got != sumOf([]byte("two")) {
		t.Fatalf("after a rewrite Sum = %s, %v; want the new content's digest", got, err)
	}
	// A replacement (new inode) too.
	tmp := p + ".new"
	if err := os.WriteFile(tmp, []byte("three"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	if got, err := Sum(p); err != nil || got != sumOf([]byte("three")) {
		t.Fatalf("after a replacement Sum = %s, %v", got, err)
	}
	if _, err := Sum(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing file has no digest")
	}
}
