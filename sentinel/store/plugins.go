package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ActiveManifest returns the id and version of the manifest a DISPATCH of
// plugin would use: its newest ACTIVE manifest by created_at, then id (as
// Resolve picks it). It fails with ErrNoActiveManifest when there is none.
func (s *Store) ActiveManifest(ctx context.Context, plugin string) (id int64, version string, err error) {
	err = s.readRow(ctx, `SELECT id, coalesce(version, '') FROM cf_plugin_manifest
		WHERE plugin_name = ? AND status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1`,
		plugin).Scan(&id, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", fmt.Errorf("plugin %q: %w", plugin, ErrNoActiveManifest)
	}
	if err != nil {
		return 0, "", fmt.Errorf("active manifest of %s: %w", plugin, err)
	}
	return id, version, nil
}

// ConfiguredSinks returns the plugin's rows of cf_topic_config (by id),
// without the DefaultSink that Sinks adds. Mode "" reads as "append".
func (s *Store) ConfiguredSinks(ctx context.Context, plugin string) ([]Sink, error) {
	rows, err := s.readQuery(ctx, `SELECT topic_name, uri, coalesce(mode, ''), coalesce(schema_json, '')
		FROM cf_topic_config WHERE plugin_name = ? ORDER BY id`, plugin)
	if err != nil {
		return nil, fmt.Errorf("configured sinks of %s: %w", plugin, err)
	}
	defer rows.Close()
	var out []Sink
	for rows.Next() {
		var k Sink
		if err := rows.Scan(&k.Topic, &k.URI, &k.Mode, &k.SchemaJSON); err != nil {
			return nil, fmt.Errorf("configured sinks of %s: %w", plugin, err)
		}
		if k.Mode == "" {
			k.Mode = "append"
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("configured sinks of %s: %w", plugin, err)
	}
	return out, nil
}
