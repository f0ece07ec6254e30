package wasm

import (
	"os"
	"path/filepath"
	"syscall"
)

// fileKey identifies one version of a file: a write to it changes its
// ctime, which no unprivileged process can set back, and usually its size
// and mtime; replacing it changes its inode.
type fileKey struct {
	path               string
	dev, ino           uint64
	size, mtime, ctime int64
}

// statFile returns the key of the file at path as it is now.
func statFile(path string) (fileKey, bool) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fileKey{}, false
	}
	fi, err := os.Stat(abs)
	if err != nil || !fi.Mode().IsRegular() {
		return fileKey{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{path: abs, dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, true
}
