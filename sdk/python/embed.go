// Package pysdk embeds the Python SDK (the casparian_flow package) so the
// Python guest can put the exact SDK version of the host on the guest's
// sys.path, whatever the plugin's environment has installed.
package pysdk

import (
	"embed"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed casparian_flow/*.py casparian_flow/py.typed
var files embed.FS

// FS returns the embedded package tree (root contains casparian_flow/).
func FS() fs.FS { return files }

// Extract writes the package under dir (dir/casparian_flow/...), files 0600
// and directories 0700, and returns dir, the path to put on sys.path.
func Extract(dir string) (string, error) {
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(path))
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o600)
	})
	return dir, err
}
