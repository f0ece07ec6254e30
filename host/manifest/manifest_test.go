package manifest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/host/guest"
)

func write(t *testing.T, path string, b []byte, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDetectAndResolve(t *testing.T) {
	dir := t.TempDir()
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	py := write(t, filepath.Join(dir, "parse.py"), []byte("class Handler: pass\n"), 0o644)
	wasm := write(t, filepath.Join(dir, "mod.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	exe := write(t, filepath.Join(dir, "plug"), self, 0o755)
	noexec := write(t, filepath.Join(dir, "noexec"), self, 0o644)
	text := write(t, filepath.Join(dir, "notes.txt"), []byte("hello"), 0o644)

	for path, want := range map[string]guest.Kind{py: guest.KindPython, wasm: guest.KindWASM, exe: guest.KindGoPlugin} {
		got, err := Detect(path)
		if err != nil || got != want {
			t.Errorf("Detect(%s) = %q, %v; want %q", filepath.Base(path), got, err, want)
		}
		m, err := Resolve(path)
		if err != nil {
			t.Fatalf("Resolve(%s): %v", path, err)
		}
		if m.Kind != want || m.Artifact != path || len(m.SHA256) != 64 ||
			m.Name != strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)) {
			t.Errorf("Resolve(%s) = %+v", filepath.Base(path), m)
		}
	}
	if _, err := Detect(noexec); err == nil || !strings.Contains(err.Error(), "chmod +x") {
		t.Errorf("non-executable ELF: %v", err)
	}
	if _, err := Detect(text); err == nil || !strings.Contains(err.Error(), "cannot tell its guest kind") {
		t.Errorf("text file: %v", err)
	}
	if _, err := Detect(dir); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("directory: %v", err)
	}
}

func TestManifestFile(t *testing.T) {
	dir := t.TempDir()
	wasm := write(t, filepath.Join(dir, "mod.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	sum, err := HashFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	good := write(t, filepath.Join(dir, "plugin.json"), []byte(`{"manifest_version": 1, "name": "jsonl",
		"version": "1.2.0", "kind": "wasm", "artifact": "mod.wasm", "sha256": "`+strings.ToUpper(sum)+`",
		"topics": ["events"]}`), 0o644)
	m, err := Resolve(good)
	if err != nil {
		t.Fatal(err)
	}
	if m.Artifact != wasm || m.SHA256 != sum || m.Name != "jsonl" || m.Version != "1.2.0" {
		t.Errorf("loaded %+v", m)
	}
	p := m.Plugin()
	if p.Kind != guest.KindWASM || p.Path != wasm || p.Hash != sum || p.Name != "jsonl" {
		t.Errorf("Plugin() = %+v", p)
	}
	// Round trip through the form the sentinel stores.
	enc := string(m.Encode())
	if !IsManifest(enc) || IsManifest("import pyarrow\n") {
		t.Error("IsManifest misclassifies")
	}
	back, err := Parse([]byte(enc))
	if err != nil || back.Artifact != wasm || back.SHA256 != sum {
		t.Errorf("Parse(Encode()) = %+v, %v", back, err)
	}

	cases := map[string]string{
		`{"manifest_version": 1, "name": "x", "kind": "wasm", "artifact": "mod.wasm", "sha256": "` + strings.Repeat("0", 64) + `"}`: "has SHA-256",
		`{"manifest_version": 1, "name": "x", "kind": "goplugin", "artifact": "mod.wasm"}`:                                          "manifest says",
		`{"manifest_version": 2, "name": "x", "kind": "wasm", "artifact": "mod.wasm"}`:                                              "not supported",
		`{"manifest_version": 1, "name": "x", "kind": "java", "artifact": "mod.wasm"}`:                                              "want python, goplugin or wasm",
		`{"manifest_version": 1, "kind": "wasm", "artifact": "mod.wasm"}`:                                                           "required",
		`{"manifest_version": 1, "name": "x", "kind": "wasm", "artifact": "missing.wasm"}`:                                          "no such file",
		`{"manifest_version": 1, "name": "x", "kind": "wasm", "artifact": "mod.wasm", "extra": 1}`:                                  "unknown field",
	}
	for body, want := range cases {
		path := write(t, filepath.Join(dir, "bad.json"), []byte(body), 0o644)
		if _, err := Resolve(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to mention %q", body, err, want)
		}
	}
}
