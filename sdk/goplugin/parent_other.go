//go:build !unix

package goplugin

import "os"

// watchParent exits when stdin reaches EOF: the host holds its only write end.
func watchParent() {
	go func() {
		buf := make([]byte, 512)
		for {
			if _, err := os.Stdin.Read(buf); err != nil {
				os.Exit(1)
			}
		}
	}()
}
