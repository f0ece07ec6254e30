package store

import (
	"context"
	"fmt"
)

// schemaDDL creates the core cf_* tables of the original system (SQLAlchemy
// models, SQLite dialect), with the original names and types. Enums are
// VARCHAR holding the enum name, without CHECK constraints, as in the
// original. The AI surveyor tables are not created.
var schemaDDL = []string{
	`CREATE TABLE IF NOT EXISTS cf_source_root (
	id INTEGER NOT NULL PRIMARY KEY,
	path VARCHAR(1000) NOT NULL UNIQUE,
	type VARCHAR(50) DEFAULT 'local',
	active INTEGER DEFAULT 1
)`,
	`CREATE TABLE IF NOT EXISTS cf_ignore_rule (
	id INTEGER NOT NULL PRIMARY KEY,
	source_root_id INTEGER REFERENCES cf_source_root (id),
	pattern VARCHAR(500) NOT NULL,
	active BOOLEAN DEFAULT 1,
	created_at DATETIME
)`,
	`CREATE TABLE IF NOT EXISTS cf_file_location (
	id INTEGER NOT NULL PRIMARY KEY,
	source_root_id INTEGER NOT NULL REFERENCES cf_source_root (id),
	rel_path VARCHAR(850) NOT NULL,
	filename VARCHAR(255) NOT NULL,
	last_known_mtime FLOAT,
	last_known_size INTEGER,
	current_version_id INTEGER REFERENCES cf_file_version (id),
	discovered_time DATETIME,
	last_seen_time DATETIME
)`,
	`CREATE INDEX IF NOT EXISTS ix_file_location_root_path ON cf_file_location (source_root_id, rel_path)`,
	`CREATE TABLE IF NOT EXISTS cf_file_hash_registry (
	content_hash VARCHAR(64) NOT NULL PRIMARY KEY,
	first_seen DATETIME,
	size_bytes INTEGER NOT NULL
)`,
	`CREATE TABLE IF NOT EXISTS cf_file_version (
	id INTEGER NOT NULL PRIMARY KEY,
	location_id INTEGER NOT NULL REFERENCES cf_file_location (id),
	content_hash VARCHAR(64) NOT NULL REFERENCES cf_file_hash_registry (content_hash),
	size_bytes INTEGER NOT NULL,
	modified_time DATETIME NOT NULL,
	detected_at DATETIME,
	applied_tags VARCHAR(1000)
)`,
	`CREATE INDEX IF NOT EXISTS ix_file_version_location_hash ON cf_file_version (location_id, content_hash)`,
	`CREATE TABLE IF NOT EXISTS cf_file_tag (
	file_id INTEGER NOT NULL REFERENCES cf_file_location (id),
	tag VARCHAR(50) NOT NULL,
	PRIMARY KEY (file_id, tag)
)`,
	`CREATE TABLE IF NOT EXISTS cf_routing_rule (
	id INTEGER NOT NULL PRIMARY KEY,
	pattern VARCHAR(500) NOT NULL,
	tag VARCHAR(50) NOT NULL,
	priority INTEGER DEFAULT 0
)`,
	`CREATE TABLE IF NOT EXISTS cf_plugin_config (
	plugin_name VARCHAR(100) NOT NULL PRIMARY KEY,
	subscription_tags VARCHAR(1000),
	default_parameters TEXT DEFAULT '{}',
	last_updated DATETIME
)`,
	`CREATE TABLE IF NOT EXISTS cf_plugin_subscription (
	id INTEGER NOT NULL PRIMARY KEY,
	plugin_name VARCHAR(100) NOT NULL REFERENCES cf_plugin_config (plugin_name),
	topic_name VARCHAR(100) NOT NULL,
	is_active BOOLEAN DEFAULT 1,
	UNIQUE (plugin_name, topic_name)
)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_plugin_subscription_topic_name ON cf_plugin_subscription (topic_name)`,
	`CREATE TABLE IF NOT EXISTS cf_topic_config (
	id INTEGER NOT NULL PRIMARY KEY,
	plugin_name VARCHAR(100) NOT NULL REFERENCES cf_plugin_config (plugin_name),
	topic_name VARCHAR(100) NOT NULL,
	uri VARCHAR(1000) NOT NULL,
	mode VARCHAR(50) DEFAULT 'append',
	schema_json TEXT
)`,
	`CREATE INDEX IF NOT EXISTS ix_topic_plugin_topic ON cf_topic_config (plugin_name, topic_name)`,
	`CREATE TABLE IF NOT EXISTS cf_processing_queue (
	id INTEGER NOT NULL PRIMARY KEY,
	file_version_id INTEGER NOT NULL REFERENCES cf_file_version (id),
	plugin_name VARCHAR(100) NOT NULL REFERENCES cf_plugin_config (plugin_name),
	config_overrides TEXT,
	status VARCHAR(9) NOT NULL DEFAULT 'PENDING',
	priority INTEGER DEFAULT 0,
	worker_host VARCHAR(100),
	worker_pid INTEGER,
	claim_time DATETIME,
	end_time DATETIME,
	result_summary TEXT,
	error_message TEXT,
	retry_count INTEGER DEFAULT 0
)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_processing_queue_status ON cf_processing_queue (status)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_processing_queue_priority ON cf_processing_queue (priority)`,
	`CREATE INDEX IF NOT EXISTS ix_queue_pop ON cf_processing_queue (status, priority, id)`,
	`CREATE TABLE IF NOT EXISTS cf_worker_node (
	hostname VARCHAR(100) NOT NULL,
	pid INTEGER NOT NULL,
	ip_address VARCHAR(50),
	env_signature VARCHAR(100),
	started_at DATETIME,
	last_heartbeat DATETIME,
	status VARCHAR(50) DEFAULT 'ACTIVE',
	current_job_id INTEGER,
	PRIMARY KEY (hostname, pid)
)`,
	`CREATE TABLE IF NOT EXISTS cf_publisher (
	id INTEGER NOT NULL PRIMARY KEY,
	azure_oid VARCHAR(36) UNIQUE,
	name VARCHAR(255) NOT NULL,
	email VARCHAR(255),
	created_at DATETIME,
	last_active DATETIME
)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_publisher_azure_oid ON cf_publisher (azure_oid)`,
	`CREATE TABLE IF NOT EXISTS cf_plugin_environment (
	hash VARCHAR(64) NOT NULL PRIMARY KEY,
	lockfile_content TEXT NOT NULL,
	size_mb FLOAT DEFAULT 0,
	last_used DATETIME,
	created_at DATETIME
)`,
	`CREATE TABLE IF NOT EXISTS cf_plugin_manifest (
	id INTEGER NOT NULL PRIMARY KEY,
	plugin_name VARCHAR(100) NOT NULL,
	version VARCHAR(50) NOT NULL,
	source_code TEXT NOT NULL,
	source_hash VARCHAR(64) NOT NULL UNIQUE,
	status VARCHAR(10) DEFAULT 'PENDING',
	signature VARCHAR(128),
	validation_error TEXT,
	created_at DATETIME,
	deployed_at DATETIME,
	env_hash VARCHAR(64) REFERENCES cf_plugin_environment (hash),
	artifact_hash VARCHAR(64),
	publisher_id INTEGER REFERENCES cf_publisher (id),
	system_requirements TEXT
)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_plugin_manifest_plugin_name ON cf_plugin_manifest (plugin_name)`,
	`CREATE INDEX IF NOT EXISTS ix_cf_plugin_manifest_status ON cf_plugin_manifest (status)`,
	`CREATE INDEX IF NOT EXISTS ix_manifest_plugin_status ON cf_plugin_manifest (plugin_name, status)`,
	`CREATE INDEX IF NOT EXISTS ix_manifest_env ON cf_plugin_manifest (env_hash)`,
	`CREATE TABLE IF NOT EXISTS cf_library_whitelist (
	id INTEGER NOT NULL PRIMARY KEY,
	library_name VARCHAR(100) NOT NULL UNIQUE,
	version_constraint VARCHAR(50),
	description TEXT,
	added_at DATETIME
)`,
}

// addedColumns are the columns this package adds to the original schema.
// They are added with ALTER TABLE ADD COLUMN when absent, so they must be
// nullable or have a constant default.
var addedColumns = []struct{ table, column, decl string }{
	// Fencing token: incremented by every claim; every conclusion names it.
	{"cf_processing_queue", "attempt", "INTEGER NOT NULL DEFAULT 0"},
	{"cf_processing_queue", "lease_owner", "VARCHAR(100)"},
	{"cf_processing_queue", "lease_expires_at", "TEXT"},
	{"cf_processing_queue", "next_attempt_at", "TEXT"},
	{"cf_processing_queue", "last_error", "TEXT"},
	// JSON {"metrics":{..},"artifacts":[..]} of the SUCCESS receipt.
	{"cf_processing_queue", "result_json", "TEXT"},
	// Worker registry (workers.go). capabilities and active_job_ids are
	// JSON arrays.
	{"cf_worker_node", "worker_id", "TEXT"},
	{"cf_worker_node", "capabilities", "TEXT"},
	{"cf_worker_node", "slots", "INTEGER"},
	{"cf_worker_node", "busy_slots", "INTEGER"},
	{"cf_worker_node", "active_job_ids", "TEXT"},
	{"cf_worker_node", "status_reason", "TEXT"},
	// The plugin artifact (manifest artifact_hash, else source_hash) a
	// routed job was created for: a file version gets one job per
	// (plugin, artifact), never two.
	{"cf_processing_queue", "artifact_hash", "VARCHAR(64)"},
	// Publisher keys (casparian keys trust): Ed25519 public key, hex.
	{"cf_publisher", "public_key", "VARCHAR(64)"},
}

// postDDL runs after the columns exist.
var postDDL = []string{
	// Claim order is priority DESC, id ASC. ix_queue_pop (the original's,
	// all ascending) still needs a temp b-tree sort of every QUEUED row of
	// the top priority per claim; this one is walked in order.
	`CREATE INDEX IF NOT EXISTS ix_queue_claim ON cf_processing_queue (status, priority DESC, id ASC)`,
	`CREATE INDEX IF NOT EXISTS ix_queue_lease ON cf_processing_queue (status, lease_expires_at)`,
	`CREATE INDEX IF NOT EXISTS ix_queue_owner ON cf_processing_queue (lease_owner)`,
	`CREATE INDEX IF NOT EXISTS ix_worker_node_worker_id ON cf_worker_node (worker_id)`,
	`CREATE INDEX IF NOT EXISTS ix_queue_routed ON cf_processing_queue (file_version_id, plugin_name, artifact_hash)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS ux_publisher_key ON cf_publisher (public_key)`,
}

// migrate runs its one-off statements unprepared (tx.Tx), outside the
// statement cache.
func (s *Store) migrate(ctx context.Context) error {
	return s.writeTx(ctx, func(tx *wtx) error {
		for _, q := range schemaDDL {
			if _, err := tx.Tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
		}
		for _, c := range addedColumns {
			have, err := hasColumn(ctx, tx, c.table, c.column)
			if err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			if have {
				continue
			}
			q := fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", c.table, c.column, c.decl)
			if _, err := tx.Tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migrate: add %s.%s: %w", c.table, c.column, err)
			}
		}
		for _, q := range postDDL {
			if _, err := tx.Tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
		}
		// Rows written by the original may hold NULL where we rely on a value.
		if _, err := tx.Tx.ExecContext(ctx,
			`UPDATE cf_processing_queue SET retry_count = 0 WHERE retry_count IS NULL`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		return nil
	})
}

func hasColumn(ctx context.Context, tx *wtx, table, column string) (bool, error) {
	var n int
	err := tx.Tx.QueryRowContext(ctx,
		`SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`, table, column).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("table info %s: %w", table, err)
	}
	return n > 0, nil
}
