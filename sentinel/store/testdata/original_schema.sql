-- Minimal subset of the schema the original Casparian Flow created with
-- SQLAlchemy create_all (SQLite dialect), with rows in the formats the
-- original wrote (Python naive "YYYY-MM-DD HH:MM:SS", Rust RFC3339).
-- It lacks the columns the Go store adds (attempt, lease_owner, ...).
CREATE TABLE cf_source_root (
	id INTEGER NOT NULL,
	path VARCHAR(1000) NOT NULL,
	type VARCHAR(50),
	active INTEGER,
	PRIMARY KEY (id),
	UNIQUE (path)
);
CREATE TABLE cf_file_hash_registry (
	content_hash VARCHAR(64) NOT NULL,
	first_seen DATETIME,
	size_bytes INTEGER NOT NULL,
	PRIMARY KEY (content_hash)
);
CREATE TABLE cf_file_location (
	id INTEGER NOT NULL,
	source_root_id INTEGER NOT NULL,
	rel_path VARCHAR(850) NOT NULL,
	filename VARCHAR(255) NOT NULL,
	last_known_mtime FLOAT,
	last_known_size INTEGER,
	current_version_id INTEGER,
	discovered_time DATETIME,
	last_seen_time DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(source_root_id) REFERENCES cf_source_root (id)
);
CREATE TABLE cf_file_version (
	id INTEGER NOT NULL,
	location_id INTEGER NOT NULL,
	content_hash VARCHAR(64) NOT NULL,
	size_bytes INTEGER NOT NULL,
	modified_time DATETIME NOT NULL,
	detected_at DATETIME,
	applied_tags VARCHAR(1000),
	PRIMARY KEY (id),
	FOREIGN KEY(location_id) REFERENCES cf_file_location (id),
	FOREIGN KEY(content_hash) REFERENCES cf_file_hash_registry (content_hash)
);
CREATE TABLE cf_plugin_config (
	plugin_name VARCHAR(100) NOT NULL,
	subscription_tags VARCHAR(1000),
	default_parameters TEXT,
	last_updated DATETIME,
	PRIMARY KEY (plugin_name)
);
CREATE TABLE cf_topic_config (
	id INTEGER NOT NULL,
	plugin_name VARCHAR(100) NOT NULL,
	topic_name VARCHAR(100) NOT NULL,
	uri VARCHAR(1000) NOT NULL,
	mode VARCHAR(50),
	schema_json TEXT,
	PRIMARY KEY (id),
	FOREIGN KEY(plugin_name) REFERENCES cf_plugin_config (plugin_name)
);
CREATE TABLE cf_processing_queue (
	id INTEGER NOT NULL,
	file_version_id INTEGER NOT NULL,
	plugin_name VARCHAR(100) NOT NULL,
	config_overrides TEXT,
	status VARCHAR(9) NOT NULL,
	priority INTEGER,
	worker_host VARCHAR(100),
	worker_pid INTEGER,
	claim_time DATETIME,
	end_time DATETIME,
	result_summary TEXT,
	error_message TEXT,
	retry_count INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(file_version_id) REFERENCES cf_file_version (id),
	FOREIGN KEY(plugin_name) REFERENCES cf_plugin_config (plugin_name)
);
CREATE INDEX ix_cf_processing_queue_status ON cf_processing_queue (status);
CREATE INDEX ix_cf_processing_queue_priority ON cf_processing_queue (priority);
CREATE INDEX ix_queue_pop ON cf_processing_queue (status, priority, id);
CREATE TABLE cf_plugin_manifest (
	id INTEGER NOT NULL,
	plugin_name VARCHAR(100) NOT NULL,
	version VARCHAR(50) NOT NULL,
	source_code TEXT NOT NULL,
	source_hash VARCHAR(64) NOT NULL,
	status VARCHAR(10),
	signature VARCHAR(128),
	validation_error TEXT,
	created_at DATETIME,
	deployed_at DATETIME,
	env_hash VARCHAR(64),
	artifact_hash VARCHAR(64),
	publisher_id INTEGER,
	system_requirements TEXT,
	PRIMARY KEY (id),
	UNIQUE (source_hash)
);

INSERT INTO cf_source_root (id, path, type, active) VALUES (1, '/data/in', 'local', 1);
INSERT INTO cf_file_hash_registry VALUES ('aaaa', '2024-03-01 10:00:00', 10);
INSERT INTO cf_file_location (id, source_root_id, rel_path, filename, current_version_id)
	VALUES (1, 1, 'sub/a.csv', 'a.csv', 1);
INSERT INTO cf_file_version (id, location_id, content_hash, size_bytes, modified_time)
	VALUES (1, 1, 'aaaa', 10, '2024-03-01 09:59:00');
INSERT INTO cf_plugin_config (plugin_name, subscription_tags, default_parameters)
	VALUES ('legacy_plugin', 'csv', '{}');
INSERT INTO cf_topic_config (id, plugin_name, topic_name, uri, mode)
	VALUES (1, 'legacy_plugin', 'output', 'parquet://legacy.parquet', NULL);
INSERT INTO cf_plugin_manifest (id, plugin_name, version, source_code, source_hash, status, created_at, env_hash)
	VALUES (1, 'legacy_plugin', '1.0', 'old code', 'h1', 'SUPERSEDED', '2024-03-01 08:00:00', NULL),
	       (2, 'legacy_plugin', '1.1', 'new code', 'h2', 'ACTIVE', '2024-03-01T09:00:00Z', NULL);
-- 1: queued by Python; 2: stuck RUNNING by the Rust sentinel (no lease);
-- 3: completed; 4: PENDING, never dispatched.
INSERT INTO cf_processing_queue (id, file_version_id, plugin_name, status, priority, retry_count)
	VALUES (1, 1, 'legacy_plugin', 'QUEUED', 0, 0);
INSERT INTO cf_processing_queue (id, file_version_id, plugin_name, status, priority, claim_time, retry_count)
	VALUES (2, 1, 'legacy_plugin', 'RUNNING', 0, '2024-03-01T10:00:00Z', NULL);
INSERT INTO cf_processing_queue (id, file_version_id, plugin_name, status, priority, claim_time, end_time, result_summary)
	VALUES (3, 1, 'legacy_plugin', 'COMPLETED', 0, '2024-03-01 10:00:00', '2024-03-01 10:00:05', 'Success');
INSERT INTO cf_processing_queue (id, file_version_id, plugin_name, status, priority)
	VALUES (4, 1, 'legacy_plugin', 'PENDING', 9);
