package wasm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"

	abi "github.com/casparianflow/casparian/sdk/wasm"
)

// inputFS shows a module its input and nothing else: mounted at /input, a
// directory holding exactly one regular file, the job's input, read-only.
// The root "/" is mounted too, as an empty read-only directory listing only
// "input", so any other path a module opens does not exist (ENOENT) rather
// than failing obscurely.
//
// It is an fs.FS rather than a read-only directory mount because wazero's
// directory mounts let a guest leave the directory with "../" (see
// FSConfig.WithReadOnlyDirMount) and would show the input's siblings. Here
// every name but "." and the input's base name does not exist, the file has
// no write methods, opening it for writing fails with EROFS, and stat shows
// neither the host's inode, owner nor permissions (the file reads as mode
// 0444, the directories as 0555).
//
// A module instance kept warm between runs keeps its inputFS: each run sets
// the file it shows (set) and takes it away afterwards (clear); between runs
// /input is empty.
type inputFS struct {
	mu   sync.Mutex
	name string // the input's base name, as the module sees it; "" between runs
	path string // the input's absolute host path
}

// checkInput checks the input file and returns its absolute path and the
// name under which the module sees it.
func checkInput(hostPath string) (abs, name string, err error) {
	abs, err = filepath.Abs(hostPath)
	if err != nil {
		return "", "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", "", err
	}
	if !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("input %s is not a regular file", abs)
	}
	name = filepath.Base(abs)
	if !fs.ValidPath(name) {
		return "", "", fmt.Errorf("input %s: its name cannot be shown inside the sandbox", abs)
	}
	return abs, name, nil
}

// set shows the checked input abs as name and returns the path under which
// the module opens it.
func (f *inputFS) set(abs, name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.name, f.path = name, abs
	return abi.InputMount + "/" + name
}

// clear empties /input.
func (f *inputFS) clear() { f.set("", "") }

func (f *inputFS) current() (name, path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name, f.path
}

// config mounts the empty root and the input directory, both read-only.
func (f *inputFS) config() wazero.FSConfig {
	cfg := wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(readOnly(rootFS{in: f}), "/")
	return cfg.(sysfs.FSConfig).WithSysFSMount(readOnly(f), abi.InputMount)
}

// readOnlyFS refuses every open that could write: wazero's ReadFS masks
// writes to files it opened, this also makes the open itself fail with
// EROFS ("read-only file system").
type readOnlyFS struct{ experimentalsys.FS }

func readOnly(f fs.FS) experimentalsys.FS {
	return &readOnlyFS{&sysfs.ReadFS{FS: &sysfs.AdaptFS{FS: f}}}
}

func (r *readOnlyFS) OpenFile(path string, flag experimentalsys.Oflag, perm fs.FileMode) (experimentalsys.File, experimentalsys.Errno) {
	if flag&(experimentalsys.O_WRONLY|experimentalsys.O_RDWR|experimentalsys.O_CREAT|experimentalsys.O_TRUNC|experimentalsys.O_APPEND) != 0 {
		if flag&experimentalsys.O_DIRECTORY != 0 {
			return nil, experimentalsys.EISDIR
		}
		return nil, experimentalsys.EROFS
	}
	return r.FS.OpenFile(path, flag, perm)
}

// rootFS is "/": an empty directory but for "input".
type rootFS struct{ in *inputFS }

func (r rootFS) Open(name string) (fs.File, error) {
	switch name {
	case ".":
		return &listDir{entries: []fs.DirEntry{fs.FileInfoToDirEntry(maskedInfo{name: "input", mode: fs.ModeDir | 0o555})}}, nil
	case "input":
		return r.in.Open(".")
	}
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

func (f *inputFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	cur, path := f.current()
	switch {
	case name == ".":
		if cur == "" {
			return &listDir{}, nil
		}
		st, err := os.Stat(path)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		info := maskedInfo{name: cur, size: st.Size(), mode: 0o444, mtime: st.ModTime()}
		return &listDir{entries: []fs.DirEntry{fs.FileInfoToDirEntry(info)}}, nil
	case name == cur && cur != "":
		file, err := os.Open(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return nil, &fs.PathError{Op: "open", Path: name, Err: pe.Err}
			}
			return nil, err
		}
		st, err := file.Stat()
		if err != nil || !st.Mode().IsRegular() {
			file.Close()
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
		}
		return &inputFile{f: file}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// inputFile is the input, open for reading: no Write, WriteAt or Fd.
type inputFile struct{ f *os.File }

func (i *inputFile) Read(b []byte) (int, error)                { return i.f.Read(b) }
func (i *inputFile) ReadAt(b []byte, off int64) (int, error)   { return i.f.ReadAt(b, off) }
func (i *inputFile) Seek(off int64, whence int) (int64, error) { return i.f.Seek(off, whence) }
func (i *inputFile) Close() error                              { return i.f.Close() }
func (i *inputFile) Stat() (fs.FileInfo, error) {
	st, err := i.f.Stat()
	if err != nil {
		return nil, err
	}
	return maskedInfo{name: st.Name(), size: st.Size(), mode: 0o444, mtime: st.ModTime()}, nil
}

// listDir is a read-only directory with fixed entries.
type listDir struct {
	entries []fs.DirEntry
	done    bool // the entries were read
}

func (d *listDir) Stat() (fs.FileInfo, error) {
	return maskedInfo{name: ".", mode: fs.ModeDir | 0o555}, nil
}
func (d *listDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: ".", Err: errors.New("is a directory")}
}
func (d *listDir) Close() error { return nil }

func (d *listDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.done {
		if n > 0 {
			return nil, io.EOF
		}
		return nil, nil
	}
	d.done = true
	return d.entries, nil
}

// maskedInfo is a FileInfo without the host's Sys data.
type maskedInfo struct {
	name  string
	size  int64
	mode  fs.FileMode
	mtime time.Time
}

func (m maskedInfo) Name() string       { return m.name }
func (m maskedInfo) Size() int64        { return m.size }
func (m maskedInfo) Mode() fs.FileMode  { return m.mode }
func (m maskedInfo) ModTime() time.Time { return m.mtime }
func (m maskedInfo) IsDir() bool        { return m.mode.IsDir() }
func (m maskedInfo) Sys() any           { return nil }
