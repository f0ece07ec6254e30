package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SourceRoot is a directory tree the scanner watches (cf_source_root).
type SourceRoot struct {
	ID     int64
	Path   string
	Active bool
}

// AddSourceRoot registers dir (made absolute; it must be an existing
// directory) as an active source root, or re-activates it. Adding it again
// is harmless.
func (s *Store) AddSourceRoot(ctx context.Context, dir string) (SourceRoot, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return SourceRoot{}, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return SourceRoot{}, fmt.Errorf("source root %s: %w", abs, err)
	}
	if !st.IsDir() {
		return SourceRoot{}, fmt.Errorf("source root %s is not a directory", abs)
	}
	var r SourceRoot
	err = s.writeTx(ctx, func(tx *wtx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_source_root (path, type, active) VALUES (?, 'local', 1)
			ON CONFLICT (path) DO UPDATE SET active = 1`, abs); err != nil {
			return err
		}
		r = SourceRoot{Path: abs, Active: true}
		return tx.QueryRowContext(ctx, `SELECT id FROM cf_source_root WHERE path = ?`, abs).Scan(&r.ID)
	})
	if err != nil {
		return SourceRoot{}, fmt.Errorf("add source root %s: %w", abs, err)
	}
	return r, nil
}

// SourceRoots lists the source roots by id.
func (s *Store) SourceRoots(ctx context.Context) ([]SourceRoot, error) {
	rows, err := s.readQuery(ctx, `SELECT id, path, coalesce(active, 1) FROM cf_source_root ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("source roots: %w", err)
	}
	defer rows.Close()
	var out []SourceRoot
	for rows.Next() {
		var r SourceRoot
		if err := rows.Scan(&r.ID, &r.Path, &r.Active); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddIgnoreRule adds a gitignore-style pattern for one root (rootID > 0)
// or for every root (rootID 0).
func (s *Store) AddIgnoreRule(ctx context.Context, rootID int64, pattern string) error {
	pattern = strings.TrimSpace(pattern)
	if pattern == "" || len(pattern) > 500 {
		return fmt.Errorf("ignore rule %q: want 1 to 500 characters", pattern)
	}
	root := sql.NullInt64{Int64: rootID, Valid: rootID > 0}
	return s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO cf_ignore_rule (source_root_id, pattern, active, created_at)
			VALUES (?, ?, 1, ?)`, root, pattern, fmtTime(s.now()))
		return err
	})
}

// IgnoreRules returns the active global rules, then those of rootID, each
// in the order they were added.
func (s *Store) IgnoreRules(ctx context.Context, rootID int64) ([]string, error) {
	rows, err := s.readQuery(ctx, `SELECT pattern FROM cf_ignore_rule WHERE coalesce(active, 1) = 1
		AND (source_root_id IS NULL OR source_root_id = ?) ORDER BY source_root_id IS NOT NULL, id`, rootID)
	if err != nil {
		return nil, fmt.Errorf("ignore rules: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// RoutingRule tags the files whose root-relative path matches Pattern.
type RoutingRule struct {
	ID       int64
	Pattern  string
	Tag      string
	Priority int64
}

// AddRoutingRule adds a glob → tag rule (cf_routing_rule).
func (s *Store) AddRoutingRule(ctx context.Context, pattern, tag string, priority int64) error {
	if pattern == "" || tag == "" || len(tag) > 50 {
		return fmt.Errorf("routing rule %q → %q: want a pattern and a tag of 1 to 50 characters", pattern, tag)
	}
	return s.writeTx(ctx, func(tx *wtx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO cf_routing_rule (pattern, tag, priority) VALUES (?, ?, ?)`, pattern, tag, priority)
		return err
	})
}

// RoutingRules lists the rules, highest priority first.
func (s *Store) RoutingRules(ctx context.Context) ([]RoutingRule, error) {
	rows, err := s.readQuery(ctx, `SELECT id, pattern, tag, coalesce(priority, 0) FROM cf_routing_rule ORDER BY priority DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("routing rules: %w", err)
	}
	defer rows.Close()
	var out []RoutingRule
	for rows.Next() {
		var r RoutingRule
		if err := rows.Scan(&r.ID, &r.Pattern, &r.Tag, &r.Priority); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Subscribe adds tags to plugin's subscriptions (cf_plugin_config.subscription_tags).
func (s *Store) Subscribe(ctx context.Context, plugin string, tags []string) error {
	if plugin == "" || len(tags) == 0 {
		return errors.New("subscribe: want a plugin name and at least one tag")
	}
	return s.writeTx(ctx, func(tx *wtx) error {
		var cur sql.NullString
		err := tx.QueryRowContext(ctx, `SELECT subscription_tags FROM cf_plugin_config WHERE plugin_name = ?`, plugin).Scan(&cur)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		all := splitTags(cur.String)
		for _, t := range tags {
			if t = strings.TrimSpace(t); t != "" && !slices.Contains(all, t) {
				all = append(all, t)
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO cf_plugin_config (plugin_name, subscription_tags, last_updated) VALUES (?, ?, ?)
			ON CONFLICT (plugin_name) DO UPDATE SET subscription_tags = excluded.subscription_tags, last_updated = excluded.last_updated`,
			plugin, strings.Join(all, ","), fmtTime(s.now()))
		return err
	})
}

// Subscriptions maps each plugin with subscriptions to its tags.
func (s *Store) Subscriptions(ctx context.Context) (map[string][]string, error) {
	rows, err := s.readQuery(ctx, `SELECT plugin_name, coalesce(subscription_tags, '') FROM cf_plugin_config`)
	if err != nil {
		return nil, fmt.Errorf("subscriptions: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var p, tags string
		if err := rows.Scan(&p, &tags); err != nil {
			return nil, err
		}
		if t := splitTags(tags); len(t) > 0 {
			out[p] = t
		}
	}
	return out, rows.Err()
}

func splitTags(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// Location is what the store knows of one path under a source root.
type Location struct {
	ID          int64
	RelPath     string
	Size        int64
	MTime       float64 // last known mtime, Unix seconds
	VersionID   int64   // current version, 0 when none
	ContentHash string  // of the current version
}

// Locations returns rootID's known paths by root-relative path.
func (s *Store) Locations(ctx context.Context, rootID int64) (map[string]Location, error) {
	rows, err := s.readQuery(ctx, `SELECT fl.id, fl.rel_path, coalesce(fl.last_known_size, -1), coalesce(fl.last_known_mtime, 0),
		coalesce(fl.current_version_id, 0), coalesce(fv.content_hash, '')
		FROM cf_file_location fl LEFT JOIN cf_file_version fv ON fv.id = fl.current_version_id
		WHERE fl.source_root_id = ?`, rootID)
	if err != nil {
		return nil, fmt.Errorf("locations: %w", err)
	}
	defer rows.Close()
	out := map[string]Location{}
	for rows.Next() {
		var l Location
		if err := rows.Scan(&l.ID, &l.RelPath, &l.Size, &l.MTime, &l.VersionID, &l.ContentHash); err != nil {
			return nil, err
		}
		out[l.RelPath] = l
	}
	return out, rows.Err()
}

// Observation is one file the scanner hashed.
type Observation struct {
	RelPath string
	Hash    string
	Size    int64
	ModTime time.Time
	Tags    []string // from the routing rules, sorted
}

// Promotion is what Promote did.
type Promotion struct {
	VersionID  int64
	NewVersion bool    // false: the content was unchanged, nothing was created
	Jobs       []int64 // jobs created for subscribed plugins
}

// Promote records an observed file in one transaction. Unchanged content
// (the location's current version has this hash) updates the location's
// size and mtime and creates nothing. Otherwise it registers the hash,
// inserts an immutable file version with the tags, points the location at
// it, and creates one QUEUED job per plugin subscribed to one of the tags,
// unless that (file version, plugin, artifact) already has a job. The
// priority follows the file's age, as the original's: under a day 100,
// under a week 50, else 10.
func (s *Store) Promote(ctx context.Context, rootID int64, o Observation) (Promotion, error) {
	rt, err := s.Routing(ctx)
	if err != nil {
		return Promotion{}, err
	}
	return s.PromoteRouted(ctx, rootID, o, rt)
}

// Routing is who subscribes to what, and the artifact each subscribed
// plugin's jobs are made for, as of one moment (a scan reads it once).
type Routing struct {
	Subscriptions map[string][]string // plugin → tags
	Artifacts     map[string]string   // plugin → artifact hash ("" without an active manifest)
}

// Routing reads the subscriptions and the subscribed plugins' artifacts.
func (s *Store) Routing(ctx context.Context) (Routing, error) {
	subs, err := s.Subscriptions(ctx)
	if err != nil {
		return Routing{}, err
	}
	rt := Routing{Subscriptions: subs, Artifacts: map[string]string{}}
	for p := range subs {
		rt.Artifacts[p] = s.artifactHash(ctx, p)
	}
	return rt, nil
}

// PromoteRouted is Promote with the routing read beforehand.
func (s *Store) PromoteRouted(ctx context.Context, rootID int64, o Observation, rt Routing) (Promotion, error) {
	now := s.now()
	nowS := fmtTime(now)
	mtime := float64(o.ModTime.UnixNano()) / 1e9
	tags := slices.Clone(o.Tags)
	slices.Sort(tags)
	var plugins []string
	for p, ts := range rt.Subscriptions {
		for _, t := range ts {
			if slices.Contains(tags, t) {
				plugins = append(plugins, p)
				break
			}
		}
	}
	slices.Sort(plugins)
	artifacts := rt.Artifacts
	priority := int64(10)
	switch age := now.Sub(o.ModTime); {
	case age < 24*time.Hour:
		priority = 100
	case age < 7*24*time.Hour:
		priority = 50
	}
	var pr Promotion
	err := s.writeTx(ctx, func(tx *wtx) error {
		pr = Promotion{}
		var locID, curVersion int64
		var curHash string
		err := tx.QueryRowContext(ctx, `SELECT fl.id, coalesce(fl.current_version_id, 0), coalesce(fv.content_hash, '')
			FROM cf_file_location fl LEFT JOIN cf_file_version fv ON fv.id = fl.current_version_id
			WHERE fl.source_root_id = ? AND fl.rel_path = ? ORDER BY fl.id LIMIT 1`, rootID, o.RelPath).Scan(&locID, &curVersion, &curHash)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res, err := tx.ExecContext(ctx, `INSERT INTO cf_file_location (source_root_id, rel_path, filename,
				last_known_mtime, last_known_size, discovered_time, last_seen_time) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				rootID, o.RelPath, truncate(filepath.Base(o.RelPath), 255), mtime, o.Size, nowS, nowS)
			if err != nil {
				return err
			}
			if locID, err = res.LastInsertId(); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		if curVersion != 0 && curHash == o.Hash {
			pr.VersionID = curVersion
			_, err := tx.ExecContext(ctx, `UPDATE cf_file_location SET last_known_mtime = ?, last_known_size = ?, last_seen_time = ?
				WHERE id = ?`, mtime, o.Size, nowS, locID)
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO cf_file_hash_registry (content_hash, first_seen, size_bytes)
			VALUES (?, ?, ?) ON CONFLICT (content_hash) DO NOTHING`, o.Hash, nowS, o.Size); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO cf_file_version (location_id, content_hash, size_bytes, modified_time,
			detected_at, applied_tags) VALUES (?, ?, ?, ?, ?, ?)`,
			locID, o.Hash, o.Size, fmtTime(o.ModTime), nowS, truncate(strings.Join(tags, ","), 1000))
		if err != nil {
			return err
		}
		if pr.VersionID, err = res.LastInsertId(); err != nil {
			return err
		}
		pr.NewVersion = true
		if _, err := tx.ExecContext(ctx, `UPDATE cf_file_location SET current_version_id = ?, last_known_mtime = ?,
			last_known_size = ?, last_seen_time = ? WHERE id = ?`, pr.VersionID, mtime, o.Size, nowS, locID); err != nil {
			return err
		}
		for _, p := range plugins {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM cf_processing_queue
				WHERE file_version_id = ? AND plugin_name = ? AND coalesce(artifact_hash, '') = ?`,
				pr.VersionID, p, artifacts[p]).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				continue
			}
			var maxID sql.NullInt64
			if err := tx.QueryRowContext(ctx, `SELECT max(id) FROM cf_processing_queue`).Scan(&maxID); err != nil {
				return err
			}
			if maxID.Int64 >= s.opts.MaxJobID {
				return fmt.Errorf("%w: last id %d, max %d", ErrJobIDExhausted, maxID.Int64, s.opts.MaxJobID)
			}
			id := maxID.Int64 + 1
			if _, err := tx.ExecContext(ctx, `INSERT INTO cf_processing_queue
				(id, file_version_id, plugin_name, status, priority, retry_count, attempt, artifact_hash)
				VALUES (?, ?, ?, 'QUEUED', ?, 0, 0, ?)`, id, pr.VersionID, p, priority, nullStr(artifacts[p])); err != nil {
				return err
			}
			pr.Jobs = append(pr.Jobs, id)
		}
		return nil
	})
	if err != nil {
		return Promotion{}, fmt.Errorf("record %s: %w", o.RelPath, err)
	}
	return pr, nil
}

// artifactHash is the identity of plugin's active artifact ("" when it has
// no active manifest).
func (s *Store) artifactHash(ctx context.Context, plugin string) string {
	var h string
	_ = s.readRow(ctx, `SELECT coalesce(nullif(artifact_hash, ''), source_hash, '') FROM cf_plugin_manifest
		WHERE plugin_name = ? AND status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1`, plugin).Scan(&h)
	return h
}

// FileRow is one line of `casparian files`.
type FileRow struct {
	Root, RelPath string
	VersionID     int64
	Hash          string
	Size          int64
	Tags          string
	Versions      int
	LastSeen      string
}

// Files lists the known files with their current version.
func (s *Store) Files(ctx context.Context, limit int) ([]FileRow, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := s.readQuery(ctx, `SELECT sr.path, fl.rel_path, coalesce(fv.id, 0), coalesce(fv.content_hash, ''),
		coalesce(fv.size_bytes, 0), coalesce(fv.applied_tags, ''),
		(SELECT count(*) FROM cf_file_version v WHERE v.location_id = fl.id), coalesce(fl.last_seen_time, '')
		FROM cf_file_location fl JOIN cf_source_root sr ON sr.id = fl.source_root_id
		LEFT JOIN cf_file_version fv ON fv.id = fl.current_version_id
		ORDER BY sr.path, fl.rel_path LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("files: %w", err)
	}
	defer rows.Close()
	var out []FileRow
	for rows.Next() {
		var f FileRow
		if err := rows.Scan(&f.Root, &f.RelPath, &f.VersionID, &f.Hash, &f.Size, &f.Tags, &f.Versions, &f.LastSeen); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// EnvSpec is a plugin's environment: its hash and requirements.
type EnvSpec struct {
	Hash     string
	Lockfile string
}

// PluginEnvs maps every plugin whose ACTIVE manifest needs an environment
// (env_hash set, lockfile stored) to it.
func (s *Store) PluginEnvs(ctx context.Context) (map[string]EnvSpec, error) {
	rows, err := s.readQuery(ctx, `SELECT m.plugin_name, m.env_hash, e.lockfile_content FROM cf_plugin_manifest m
		JOIN cf_plugin_environment e ON e.hash = m.env_hash
		WHERE m.status = 'ACTIVE' AND m.env_hash IS NOT NULL AND m.env_hash NOT IN ('', 'system')
		ORDER BY m.created_at, m.id`)
	if err != nil {
		return nil, fmt.Errorf("plugin environments: %w", err)
	}
	defer rows.Close()
	out := map[string]EnvSpec{}
	for rows.Next() {
		var p string
		var e EnvSpec
		if err := rows.Scan(&p, &e.Hash, &e.Lockfile); err != nil {
			return nil, err
		}
		out[p] = e
	}
	return out, rows.Err()
}

// FailQueued fails every QUEUED job of plugin for good with msg (its
// environment cannot be built: running it again would fail the same way
// until the plugin is republished; casparian requeue runs them again).
func (s *Store) FailQueued(ctx context.Context, plugin, msg string) ([]int64, error) {
	now := fmtTime(s.now())
	ids, err := s.updateReturningIDs(ctx, `UPDATE cf_processing_queue SET status = 'FAILED', end_time = ?, error_message = ?,
		last_error = ? WHERE plugin_name = ? AND status = 'QUEUED' RETURNING id`, now, msg, msg, plugin)
	if err != nil {
		return nil, fmt.Errorf("fail queued jobs of %s: %w", plugin, err)
	}
	return ids, nil
}

// QueuedAmong returns the plugins of plugins that have a QUEUED job, in one
// query.
func (s *Store) QueuedAmong(ctx context.Context, plugins []string) (map[string]bool, error) {
	out := map[string]bool{}
	if len(plugins) == 0 {
		return out, nil
	}
	list, err := json.Marshal(plugins)
	if err != nil {
		return nil, err
	}
	rows, err := s.readQuery(ctx, `SELECT value FROM json_each(?) AS p WHERE EXISTS
		(SELECT 1 FROM cf_processing_queue WHERE status = 'QUEUED' AND plugin_name = p.value)`, string(list))
	if err != nil {
		return nil, fmt.Errorf("queued plugins: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		out[name] = true
	}
	return out, rows.Err()
}
