package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Plugin manifest statuses (cf_plugin_manifest.status). SUPERSEDED is
// written when a newer manifest of the same plugin becomes ACTIVE (as the
// Rust sentinel did); the original's Python enum does not know it.
const (
	ManifestPending    = "PENDING"
	ManifestStaging    = "STAGING"
	ManifestActive     = "ACTIVE"
	ManifestRejected   = "REJECTED"
	ManifestSuperseded = "SUPERSEDED"
)

// Sink is one output topic of a plugin (cf_topic_config).
type Sink struct {
	Topic      string
	URI        string
	Mode       string // "append" when NULL or empty
	SchemaJSON string // "" when NULL
}

// DefaultSink is the sink added when a plugin has no topic named "output".
func DefaultSink(plugin string) Sink {
	return Sink{Topic: "output", URI: "parquet://" + plugin + "_output.parquet", Mode: "append"}
}

// Dispatch is everything a DISPATCH message needs for one job.
type Dispatch struct {
	JobID           int64
	PluginName      string
	FilePath        string // source root joined with rel_path, inside the root
	ManifestID      int64
	Version         string
	SourceCode      string
	EnvHash         string // "system" when NULL
	ArtifactHash    string
	ConfigOverrides string
	Sinks           []Sink
}

// Resolve builds the Dispatch for job id: the file path, the plugin's
// newest ACTIVE manifest (by created_at, then id) and its sinks. It fails
// with ErrFileMissing, ErrPathEscapesRoot or ErrNoActiveManifest; the
// caller must then conclude the claimed attempt as a non-retriable FAILED
// so the job does not stay RUNNING.
func (s *Store) Resolve(ctx context.Context, id int64) (*Dispatch, error) {
	var plugin, overrides string
	var fv sql.NullInt64
	err := s.readRow(ctx, `SELECT plugin_name, coalesce(config_overrides, ''), file_version_id
		FROM cf_processing_queue WHERE id = ?`, id).Scan(&plugin, &overrides, &fv)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("resolve job %d: %w", id, ErrJobNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve job %d: %w", id, err)
	}
	path, err := s.FilePath(ctx, fv.Int64)
	if err != nil {
		return nil, fmt.Errorf("resolve job %d: %w", id, err)
	}
	info, err := s.PluginDispatch(ctx, plugin)
	if err != nil {
		return nil, fmt.Errorf("resolve job %d: %w", id, err)
	}
	return &Dispatch{JobID: id, PluginName: plugin, FilePath: path, ConfigOverrides: overrides,
		ManifestID: info.ManifestID, Version: info.Version, SourceCode: info.SourceCode, EnvHash: info.EnvHash,
		ArtifactHash: info.ArtifactHash, Sinks: info.Sinks}, nil
}

// FilePath returns the absolute path of a file version: its source root
// joined with its location's rel_path, which must stay inside the root. It
// fails with ErrFileMissing or ErrPathEscapesRoot.
func (s *Store) FilePath(ctx context.Context, fileVersionID int64) (string, error) {
	var root, rel sql.NullString
	err := s.readRow(ctx, `SELECT sr.path, fl.rel_path
		FROM cf_file_version fv
		LEFT JOIN cf_file_location fl ON fl.id = fv.location_id
		LEFT JOIN cf_source_root sr ON sr.id = fl.source_root_id
		WHERE fv.id = ?`, fileVersionID).Scan(&root, &rel)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	if !root.Valid || !rel.Valid {
		return "", fmt.Errorf("file version %d: %w (file version, location or source root row absent)", fileVersionID, ErrFileMissing)
	}
	return JoinInRoot(root.String, rel.String)
}

// PluginInfo is what a DISPATCH needs of a plugin: its newest ACTIVE
// manifest and its sinks.
type PluginInfo struct {
	ManifestID   int64
	Version      string
	SourceCode   string
	EnvHash      string // "system" when NULL
	ArtifactHash string
	Sinks        []Sink
}

// PluginDispatch returns the plugin's newest ACTIVE manifest (by
// created_at, then id) and its sinks, or ErrNoActiveManifest.
func (s *Store) PluginDispatch(ctx context.Context, plugin string) (*PluginInfo, error) {
	d := &PluginInfo{}
	var env, art sql.NullString
	err := s.readRow(ctx, `SELECT id, coalesce(version, ''), source_code, env_hash, artifact_hash
		FROM cf_plugin_manifest WHERE plugin_name = ? AND status = 'ACTIVE'
		ORDER BY created_at DESC, id DESC LIMIT 1`, plugin).Scan(&d.ManifestID, &d.Version, &d.SourceCode, &env, &art)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("plugin %q: %w", plugin, ErrNoActiveManifest)
	}
	if err != nil {
		return nil, err
	}
	d.EnvHash = "system"
	if env.Valid && env.String != "" {
		d.EnvHash = env.String
	}
	d.ArtifactHash = art.String
	if d.Sinks, err = s.Sinks(ctx, plugin); err != nil {
		return nil, err
	}
	return d, nil
}

// JoinInRoot joins root and rel with filepath.Join and fails with
// ErrPathEscapesRoot when the result is not inside root. An absolute rel is
// taken relative to root, as the original's string concatenation did.
func JoinInRoot(root, rel string) (string, error) {
	if root == "" {
		return "", fmt.Errorf("join %q: %w (empty source root)", rel, ErrFileMissing)
	}
	cleanRoot := filepath.Clean(root)
	p := filepath.Join(cleanRoot, rel)
	r, err := filepath.Rel(cleanRoot, p)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("join %q to %q: %w", rel, root, ErrPathEscapesRoot)
	}
	if r == "." {
		return "", fmt.Errorf("join %q to %q: %w (path is the root itself)", rel, root, ErrPathEscapesRoot)
	}
	return p, nil
}

// Sinks returns the plugin's topics from cf_topic_config (by id), plus
// DefaultSink when none is named "output".
func (s *Store) Sinks(ctx context.Context, plugin string) ([]Sink, error) {
	rows, err := s.readQuery(ctx, `SELECT topic_name, uri, coalesce(mode, ''), coalesce(schema_json, '')
		FROM cf_topic_config WHERE plugin_name = ? ORDER BY id`, plugin)
	if err != nil {
		return nil, fmt.Errorf("sinks of %s: %w", plugin, err)
	}
	defer rows.Close()
	var out []Sink
	hasOutput := false
	for rows.Next() {
		var k Sink
		if err := rows.Scan(&k.Topic, &k.URI, &k.Mode, &k.SchemaJSON); err != nil {
			return nil, fmt.Errorf("sinks of %s: %w", plugin, err)
		}
		if k.Mode == "" {
			k.Mode = "append"
		}
		if k.Topic == "output" {
			hasOutput = true
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sinks of %s: %w", plugin, err)
	}
	if !hasOutput {
		out = append(out, DefaultSink(plugin))
	}
	return out, nil
}

// FileSpec names a file to register by hand (casparian enqueue).
type FileSpec struct {
	Root    string // source root directory (stored as given, made absolute)
	RelPath string // path under Root
	// ContentHash is the hex sha256 of the content. Empty: the file is read
	// and hashed, and Size and ModTime are taken from it.
	ContentHash string
	Size        int64
	ModTime     time.Time
}

// AddFile records a file version for spec, creating the source root,
// location and hash registry rows as needed, and returns the
// cf_file_version id to pass to Enqueue. A location whose current version
// already has the same content hash is reused.
func (s *Store) AddFile(ctx context.Context, spec FileSpec) (int64, error) {
	root, err := filepath.Abs(spec.Root)
	if err != nil {
		return 0, fmt.Errorf("add file: %w", err)
	}
	full, err := JoinInRoot(root, spec.RelPath)
	if err != nil {
		return 0, fmt.Errorf("add file: %w", err)
	}
	rel, _ := filepath.Rel(root, full)
	rel = filepath.ToSlash(rel)
	if spec.ContentHash == "" {
		if spec.ContentHash, spec.Size, spec.ModTime, err = hashFile(full); err != nil {
			return 0, fmt.Errorf("add file: %w", err)
		}
	}
	now := fmtTime(s.now())
	var versionID int64
	err = s.writeTx(ctx, func(tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_source_root (path, type, active) VALUES (?, 'local', 1)
			ON CONFLICT (path) DO NOTHING`, root); err != nil {
			return err
		}
		var rootID int64
		if err := tx.QueryRowContext(ctx, `SELECT id FROM cf_source_root WHERE path = ?`, root).Scan(&rootID); err != nil {
			return err
		}
		var locID int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM cf_file_location WHERE source_root_id = ? AND rel_path = ?
			ORDER BY id LIMIT 1`, rootID, rel).Scan(&locID)
		if errors.Is(err, sql.ErrNoRows) {
			res, err := tx.ExecContext(ctx, `INSERT INTO cf_file_location (source_root_id, rel_path, filename,
				last_known_size, discovered_time, last_seen_time) VALUES (?, ?, ?, ?, ?, ?)`,
				rootID, rel, filepath.Base(full), spec.Size, now, now)
			if err != nil {
				return err
			}
			if locID, err = res.LastInsertId(); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_file_hash_registry (content_hash, first_seen, size_bytes)
			VALUES (?, ?, ?) ON CONFLICT (content_hash) DO NOTHING`, spec.ContentHash, now, spec.Size); err != nil {
			return err
		}
		err = tx.QueryRowContext(ctx, `SELECT fv.id FROM cf_file_location fl JOIN cf_file_version fv
			ON fv.id = fl.current_version_id WHERE fl.id = ? AND fv.content_hash = ?`, locID, spec.ContentHash).Scan(&versionID)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO cf_file_version (location_id, content_hash, size_bytes,
			modified_time, detected_at) VALUES (?, ?, ?, ?, ?)`,
			locID, spec.ContentHash, spec.Size, fmtTime(spec.ModTime), now)
		if err != nil {
			return err
		}
		if versionID, err = res.LastInsertId(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE cf_file_location SET current_version_id = ?, last_known_size = ?,
			last_seen_time = ? WHERE id = ?`, versionID, spec.Size, now, locID)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("add file %s: %w", full, err)
	}
	return versionID, nil
}

func hashFile(path string) (string, int64, time.Time, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, time.Time{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, time.Time{}, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, time.Time{}, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, st.ModTime(), nil
}

// PluginSpec describes a plugin manifest to register by hand.
type PluginSpec struct {
	Name         string
	Version      string
	SourceCode   string
	EnvHash      string // "" stores NULL ("system")
	ArtifactHash string // "" stores NULL
	// Lockfile is the environment's requirements, kept in
	// cf_plugin_environment under EnvHash (which must be its SHA-256).
	Lockfile string
}

// AddPlugin makes spec the plugin's ACTIVE manifest and returns its id. It
// creates the cf_plugin_config row if missing and marks the plugin's other
// ACTIVE manifests SUPERSEDED. Because source_hash (sha256 of SourceCode)
// is UNIQUE, identical source already stored for the same plugin is
// re-activated instead of inserted; for another plugin it is an error.
func (s *Store) AddPlugin(ctx context.Context, spec PluginSpec) (int64, error) {
	if spec.Name == "" || spec.SourceCode == "" {
		return 0, errors.New("add plugin: name and source code are required")
	}
	if spec.Version == "" {
		spec.Version = "0.0.0"
	}
	sum := sha256.Sum256([]byte(spec.SourceCode))
	srcHash := hex.EncodeToString(sum[:])
	now := fmtTime(s.now())
	var id int64
	err := s.writeTx(ctx, func(tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_plugin_config (plugin_name, subscription_tags,
			default_parameters, last_updated) VALUES (?, '', '{}', ?) ON CONFLICT (plugin_name) DO NOTHING`,
			spec.Name, now); err != nil {
			return err
		}
		var owner string
		err := tx.QueryRowContext(ctx, `SELECT id, plugin_name FROM cf_plugin_manifest WHERE source_hash = ?`,
			srcHash).Scan(&id, &owner)
		switch {
		case err == nil && owner != spec.Name:
			return fmt.Errorf("identical source already deployed as plugin %q (manifest %d)", owner, id)
		case err == nil:
			if _, err := tx.ExecContext(ctx, `UPDATE cf_plugin_manifest SET status = 'ACTIVE', deployed_at = ?,
				created_at = ? WHERE id = ?`, now, now, id); err != nil {
				return err
			}
		case errors.Is(err, sql.ErrNoRows):
			res, err := tx.ExecContext(ctx, `INSERT INTO cf_plugin_manifest (plugin_name, version, source_code,
				source_hash, status, created_at, deployed_at, env_hash, artifact_hash)
				VALUES (?, ?, ?, ?, 'ACTIVE', ?, ?, ?, ?)`, spec.Name, spec.Version, spec.SourceCode, srcHash,
				now, now, nullStr(spec.EnvHash), nullStr(spec.ArtifactHash))
			if err != nil {
				return err
			}
			if id, err = res.LastInsertId(); err != nil {
				return err
			}
		default:
			return err
		}
		if spec.EnvHash != "" && spec.Lockfile != "" {
			if _, err := tx.ExecContext(ctx, `INSERT INTO cf_plugin_environment (hash, lockfile_content, created_at, last_used)
				VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING`, spec.EnvHash, spec.Lockfile, now, now); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE cf_plugin_manifest SET status = 'SUPERSEDED'
			WHERE plugin_name = ? AND status = 'ACTIVE' AND id <> ?`, spec.Name, id)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("add plugin %s: %w", spec.Name, err)
	}
	return id, nil
}

// AddSink adds an output topic for a plugin to cf_topic_config. mode ""
// means "append".
func (s *Store) AddSink(ctx context.Context, plugin string, k Sink) error {
	if k.Mode == "" {
		k.Mode = "append"
	}
	err := s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO cf_topic_config (plugin_name, topic_name, uri, mode, schema_json)
			VALUES (?, ?, ?, ?, ?)`, plugin, k.Topic, k.URI, k.Mode, nullStr(k.SchemaJSON))
		return err
	})
	if err != nil {
		return fmt.Errorf("add sink %s/%s: %w", plugin, k.Topic, err)
	}
	return nil
}
