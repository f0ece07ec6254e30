package filehash

import (
	"os"
	"syscall"
)

// key identifies one version of a file.
type key struct {
	path               string
	dev, ino           uint64
	size, mtime, ctime int64
}

func statKey(abs string) (key, bool) {
	fi, err := os.Stat(abs)
	if err != nil || !fi.Mode().IsRegular() {
		return key{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return key{}, false
	}
	return key{path: abs, dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, true
}
