// Package filehash computes files' SHA-256 digests and remembers them by the
// file's identity, so that a plugin artifact checked before every job is
// read and hashed once, not once per job (a 20 MB executable costs ~15 ms).
//
// A remembered digest is used only while the file's device, inode, size,
// mtime and ctime are unchanged. A write changes the ctime, which no
// unprivileged process can set back; a replacement changes the inode. A
// file changed within the last RacyWindow is not remembered: a second write
// within its timestamp granularity could go unnoticed (git's "racily
// clean" problem). On systems without this stat data nothing is
// remembered.
package filehash

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// RacyWindow is how long a file must have been left alone before its
// digest is remembered.
var RacyWindow = 2 * time.Second

// maxEntries bounds the cache; past it, it starts afresh.
const maxEntries = 1024

var (
	mu    sync.Mutex
	known = map[key]string{}
	reads int // files read and hashed, for tests
)

// Sum returns the hex SHA-256 of the file at path.
func Sum(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	k, ok := statKey(abs)
	if ok {
		mu.Lock()
		sum, hit := known[k]
		mu.Unlock()
		if hit {
			return sum, nil
		}
	}
	sum, err := hashFile(abs)
	if err != nil {
		return "", err
	}
	if ok && time.Since(time.Unix(0, k.ctime)) > RacyWindow {
		// Remember it only if the file did not change while it was read.
		if k2, ok2 := statKey(abs); ok2 && k2 == k {
			mu.Lock()
			if len(known) >= maxEntries {
				clear(known)
			}
			known[k] = sum
			mu.Unlock()
		}
	}
	return sum, nil
}

// Reads returns how many files Sum read and hashed so far.
func Reads() int {
	mu.Lock()
	defer mu.Unlock()
	return reads
}

func hashFile(path string) (string, error) {
	mu.Lock()
	reads++
	mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
