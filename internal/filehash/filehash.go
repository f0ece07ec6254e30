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
	k := Stat(path)
	if sum, ok := k.Lookup(); ok {
		return sum, nil
	}
	sum, err := hashFile(path)
	if err != nil {
		return "", err
	}
	k.Remember(sum)
	return sum, nil
}

// Key identifies one version of a file, as Stat saw it.
type Key struct {
	k  key
	ok bool
}

// Stat returns the key of the file at path as it is now. A file that
// cannot be identified (missing, not regular, no stat data) has a key that
// never matches.
func Stat(path string) Key {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Key{}
	}
	k, ok := statKey(abs)
	return Key{k: k, ok: ok}
}

// Lookup returns the digest remembered for this version of the file.
func (k Key) Lookup() (string, bool) {
	if !k.ok {
		return "", false
	}
	mu.Lock()
	defer mu.Unlock()
	sum, ok := known[k.k]
	return sum, ok
}

// Remember records sum, the digest of the bytes read after Stat returned
// k, unless the file changed within RacyWindow or has changed since k.
func (k Key) Remember(sum string) {
	if !k.ok || time.Since(time.Unix(0, k.k.ctime)) <= RacyWindow {
		return
	}
	if now, ok := statKey(k.k.path); !ok || now != k.k {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	if len(known) >= maxEntries {
		clear(known)
	}
	known[k.k] = sum
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
	return File(path)
}

// File returns the hex SHA-256 of the file at path, read now (nothing is
// remembered).
func File(path string) (string, error) {
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
