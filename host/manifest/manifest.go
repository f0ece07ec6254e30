// Package manifest identifies plugin artifacts: what guest kind runs a file,
// and the manifest that names a plugin (name, version, guest kind, artifact
// path and SHA-256, topics).
//
// A manifest is a small JSON file an author ships next to the artifact:
//
//	{
//	  "manifest_version": 1,
//	  "name": "jsonl",
//	  "version": "1.0.0",
//	  "kind": "wasm",
//	  "artifact": "jsonl.wasm",
//	  "sha256": "9f2c…",
//	  "topics": ["events", "errors"]
//	}
//
// "artifact" is relative to the manifest's directory (or absolute). When
// "sha256" is present the artifact must match it. The same JSON, with an
// absolute artifact path, is what the sentinel stores as a binary plugin's
// source and sends in DISPATCH (workers verify the hash before running it).
package manifest

import (
	"bytes"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/filehash"
)

// Version is the manifest format version this package reads and writes.
const Version = 1

// Manifest names one plugin artifact.
type Manifest struct {
	ManifestVersion int        `json:"manifest_version"`
	Name            string     `json:"name"`
	Version         string     `json:"version,omitempty"`
	Description     string     `json:"description,omitempty"`
	Kind            guest.Kind `json:"kind"`
	// Artifact is the artifact's path: relative to the manifest file's
	// directory in a file, absolute once loaded.
	Artifact string   `json:"artifact"`
	SHA256   string   `json:"sha256,omitempty"`
	Topics   []string `json:"topics,omitempty"`

	// Publishing (casparian publish): files matching Pattern (a routing
	// glob) are tagged auto_<name>, which the plugin subscribes to, as it
	// does to Subscriptions; Sinks send topics to sink URIs.
	Pattern       string   `json:"pattern,omitempty"`
	Subscriptions []string `json:"subscriptions,omitempty"`
	Sinks         []Sink   `json:"sinks,omitempty"`
	// Requirements (Python plugins) are pip requirement lines; workers run
	// the plugin in an environment with them installed.
	Requirements []string `json:"requirements,omitempty"`
}

// Sink sends one topic to a sink URI (parquet://…, sqlite://…).
type Sink struct {
	Topic string `json:"topic"`
	URI   string `json:"uri"`
}

// Plugin is the guest.Plugin to load.
func (m *Manifest) Plugin() guest.Plugin {
	return guest.Plugin{Name: m.Name, Version: m.Version, Kind: m.Kind, Path: m.Artifact, Hash: m.SHA256}
}

// Encode returns the manifest as indented JSON.
func (m *Manifest) Encode() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// Detect tells which guest kind runs the file at path: "python" for a .py
// file, "wasm" for a WebAssembly module (by its magic bytes), "goplugin" for
// an executable ELF file. It does not read manifests (see Resolve).
func Detect(path string) (guest.Kind, error) {
	if strings.EqualFold(filepath.Ext(path), ".py") {
		return guest.KindPython, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		return "", fmt.Errorf("%s is a directory; pass the plugin file", path)
	}
	var magic [4]byte
	n, _ := io.ReadFull(f, magic[:])
	switch {
	case n == 4 && bytes.Equal(magic[:], []byte("\x00asm")):
		return guest.KindWASM, nil
	case n == 4 && bytes.Equal(magic[:], []byte(elf.ELFMAG)):
		if st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s is an ELF file but not executable: chmod +x it to run it as a go-plugin", path)
		}
		return guest.KindGoPlugin, nil
	}
	return "", fmt.Errorf("%s: cannot tell its guest kind: Python plugins end in .py, WASM modules start with \\0asm, "+
		"go-plugin executables are ELF binaries; or pass a plugin manifest (.json)", path)
}

// Resolve turns a --plugin argument into a manifest: a manifest file (.json)
// is read and its artifact checked; any other file is detected by Detect and
// described by a manifest named after the file's stem. The artifact's
// SHA-256 is always computed (and compared with the manifest's, if any).
func Resolve(path string) (*Manifest, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if strings.EqualFold(filepath.Ext(abs), ".json") {
		return Load(abs)
	}
	kind, err := Detect(abs)
	if err != nil {
		return nil, err
	}
	sum, err := HashFile(abs)
	if err != nil {
		return nil, err
	}
	name := strings.TrimSuffix(filepath.Base(abs), filepath.Ext(abs))
	return &Manifest{ManifestVersion: Version, Name: name, Kind: kind, Artifact: abs, SHA256: sum}, nil
}

// Load reads a manifest file, makes its artifact path absolute and checks
// the artifact: it exists, its kind matches, and its SHA-256 equals the
// manifest's when one is given (else it is filled in).
func Load(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	if !filepath.IsAbs(m.Artifact) {
		m.Artifact = filepath.Join(filepath.Dir(path), m.Artifact)
	}
	if err := m.Verify(); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return m, nil
}

// Parse decodes and validates manifest JSON (without touching the artifact).
func Parse(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("not a plugin manifest: %w", err)
	}
	if m.ManifestVersion != Version {
		return nil, fmt.Errorf("manifest_version %d is not supported (want %d)", m.ManifestVersion, Version)
	}
	if m.Name == "" || m.Artifact == "" {
		return nil, errors.New(`"name" and "artifact" are required`)
	}
	switch m.Kind {
	case guest.KindPython, guest.KindGoPlugin, guest.KindWASM:
	default:
		return nil, fmt.Errorf(`"kind" %q: want python, goplugin or wasm`, m.Kind)
	}
	if m.SHA256 != "" {
		if _, err := hex.DecodeString(m.SHA256); err != nil || len(m.SHA256) != 64 {
			return nil, fmt.Errorf(`"sha256" %q is not 64 hex characters`, m.SHA256)
		}
		m.SHA256 = strings.ToLower(m.SHA256)
	}
	return &m, nil
}

// IsManifest reports whether a plugin source (as stored by the sentinel) is
// a manifest rather than Python source code.
func IsManifest(source string) bool {
	s := strings.TrimSpace(source)
	return strings.HasPrefix(s, "{") && strings.Contains(s, `"manifest_version"`)
}

// Verify checks that the artifact exists, is of the declared kind, and
// matches SHA256 (which it fills in when empty).
func (m *Manifest) Verify() error {
	kind, err := Detect(m.Artifact)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if kind != m.Kind {
		return fmt.Errorf("artifact %s is a %s plugin, but the manifest says %q", m.Artifact, kind, m.Kind)
	}
	// Verify runs before every job on a worker: an artifact unchanged since
	// it was last hashed is not read again.
	sum, err := filehash.Sum(m.Artifact)
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if m.SHA256 == "" {
		m.SHA256 = sum
	} else if sum != m.SHA256 {
		return fmt.Errorf("artifact %s has SHA-256 %s, but the manifest says %s: rebuild the manifest or fix the artifact",
			m.Artifact, sum, m.SHA256)
	}
	return nil
}

// HashFile returns the hex SHA-256 of a file, read now.
func HashFile(path string) (string, error) { return filehash.File(path) }
