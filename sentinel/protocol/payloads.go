package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// The JSON payloads of §2.4 of the original system. Field names are the
// original snake_case keys. On decode, unknown keys are ignored and null is
// accepted for every field (Python peers send optional fields as null); it
// leaves the Go zero value, or the documented default. On encode, optional
// fields are left out when empty, as the Rust peers did, and required lists
// and maps are written as [] / {} rather than null.
//
// Reliability extensions (attempt, slots, free_slots, protocol_extensions)
// are optional keys, left out when zero, so a plain v4 peer that ignores
// unknown keys sees exactly the original payload. See docs/PROTOCOL.md.

// Protocol extensions a peer may list in IdentifyPayload.ProtocolExtensions.
const (
	// ExtAttempt: the peer echoes DispatchCommand.Attempt in
	// JobReceipt.Attempt, so the sentinel can fence stale CONCLUDEs.
	ExtAttempt = "attempt"
	// ExtSlots: the peer reports its concurrency in IDENTIFY/HEARTBEAT
	// (slots, free_slots) and accepts that many concurrent DISPATCHes.
	ExtSlots = "slots"
	// ExtConcludeAck: the sentinel answers every CONCLUDE from the peer with
	// an ACK carrying the same job_id, and the peer resends unacknowledged
	// CONCLUDEs after it reconnects. Duplicates are harmless (fenced).
	ExtConcludeAck = "conclude-ack"
	// ExtReidentify: the peer sends IDENTIFY again when the sentinel answers
	// it with ERR (job_id 0) whose message starts with ReidentifyPrefix.
	ExtReidentify = "reidentify"
	// ExtPrepareEnv: the peer provisions plugin environments: it answers
	// PREPARE_ENV with ENV_READY (Error set when the install failed) and
	// lists the environments it has in IDENTIFY and HEARTBEAT (envs). The
	// sentinel dispatches a job whose plugin needs an environment only to a
	// peer that has it.
	ExtPrepareEnv = "prepare-env"
)

// ReidentifyPrefix starts the ERR message a sentinel sends to a peer it does
// not know (e.g. after the sentinel restarted, or evicted the peer).
const ReidentifyPrefix = "unknown worker: send IDENTIFY"

// Sink modes.
const (
	ModeAppend  = "append"
	ModeReplace = "replace"
	ModeError   = "error"
)

// SinkConfig says where one output topic goes.
type SinkConfig struct {
	Topic string `json:"topic"`
	URI   string `json:"uri"`
	// Mode is append, replace or error. Empty or missing means "append",
	// on decode and on encode.
	Mode      string `json:"mode"`
	SchemaDef string `json:"schema_def,omitempty"`
}

type sinkConfigJSON SinkConfig

// MarshalJSON writes an empty Mode as "append".
func (s SinkConfig) MarshalJSON() ([]byte, error) {
	if s.Mode == "" {
		s.Mode = ModeAppend
	}
	return marshalNoEscape(sinkConfigJSON(s))
}

// UnmarshalJSON applies the "append" default to a missing or null mode.
func (s *SinkConfig) UnmarshalJSON(b []byte) error {
	var v sinkConfigJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v.Mode == "" {
		v.Mode = ModeAppend
	}
	*s = SinkConfig(v)
	return nil
}

// DispatchCommand is the DISPATCH payload (S→W); the header job_id is the job.
type DispatchCommand struct {
	PluginName    string       `json:"plugin_name"`
	FilePath      string       `json:"file_path"` // absolute
	Sinks         []SinkConfig `json:"sinks"`     // written as [] when nil
	FileVersionID int64        `json:"file_version_id"`
	EnvHash       string       `json:"env_hash"` // 64 hex chars, or "system"
	SourceCode    string       `json:"source_code"`
	ArtifactHash  string       `json:"artifact_hash,omitempty"`
	// Attempt (extension) is the job's lease/fencing token, ≥ 1; 0 = not
	// sent. A worker listing ExtAttempt echoes it in its JobReceipt.
	Attempt int64 `json:"attempt,omitempty"`
}

type dispatchCommandJSON DispatchCommand

// MarshalJSON writes nil Sinks as [].
func (d DispatchCommand) MarshalJSON() ([]byte, error) {
	if d.Sinks == nil {
		d.Sinks = []SinkConfig{}
	}
	return marshalNoEscape(dispatchCommandJSON(d))
}

// ReceiptStatus is the outcome in a JobReceipt.
type ReceiptStatus string

// Receipt statuses; any other value fails decoding.
const (
	StatusSuccess  ReceiptStatus = "SUCCESS"
	StatusFailed   ReceiptStatus = "FAILED"
	StatusRejected ReceiptStatus = "REJECTED" // worker at capacity; the job is requeued
	StatusAborted  ReceiptStatus = "ABORTED"
)

// Valid reports whether s is one of the four statuses.
func (s ReceiptStatus) Valid() bool {
	switch s {
	case StatusSuccess, StatusFailed, StatusRejected, StatusAborted:
		return true
	}
	return false
}

// JobReceipt is the CONCLUDE payload (W→S); the header job_id is the job.
type JobReceipt struct {
	Status ReceiptStatus `json:"status"`
	// Metrics holds counters such as {"rows": N}; written as {} when nil.
	Metrics map[string]int64 `json:"metrics"`
	// Artifacts lists outputs such as [{"topic":…, "uri":…}]; written as []
	// when nil.
	Artifacts    []map[string]string `json:"artifacts"`
	ErrorMessage string              `json:"error_message,omitempty"`
	// Attempt (extension) echoes DispatchCommand.Attempt; 0 = not sent.
	Attempt int64 `json:"attempt,omitempty"`
	// Requeue (extension), with ABORTED: the job was stopped through no
	// fault of its own (the worker is shutting down), so the sentinel
	// requeues it instead of failing it.
	Requeue bool `json:"requeue,omitempty"`
	// Retriable (extension), with FAILED: the failure may not recur (the
	// plugin process crashed or was killed, the job timed out, a sink failed,
	// e.g. a full disk), so the job is queued again with backoff, up to the
	// retry limit. Without it a FAILED job is final (a plugin's own error,
	// bad input or a schema mismatch would fail again the same way).
	Retriable bool `json:"retriable,omitempty"`
	// ErrorKind (extension), with FAILED: the guest error code (CRASHED,
	// TIMEOUT, RESOURCE_LIMIT, PLUGIN_ERROR, SINK, ...), so the sentinel can
	// tell a crashing plugin from a failing disk without parsing messages.
	ErrorKind string `json:"error_kind,omitempty"`
}

type jobReceiptJSON JobReceipt

// MarshalJSON writes nil Metrics as {} and nil Artifacts as [].
func (r JobReceipt) MarshalJSON() ([]byte, error) {
	if r.Metrics == nil {
		r.Metrics = map[string]int64{}
	}
	if r.Artifacts == nil {
		r.Artifacts = []map[string]string{}
	}
	return marshalNoEscape(jobReceiptJSON(r))
}

func (r *JobReceipt) validate() error {
	if !r.Status.Valid() {
		return fmt.Errorf("unknown status %q (want SUCCESS, FAILED, REJECTED or ABORTED)", string(r.Status))
	}
	return nil
}

// IdentifyPayload is the IDENTIFY payload (W→S), sent on connect with job_id 0.
type IdentifyPayload struct {
	// Capabilities lists the plugin names the worker runs; "*" means any.
	// Written as [] when nil.
	Capabilities []string `json:"capabilities"`
	WorkerID     string   `json:"worker_id,omitempty"`
	// Slots (extension) is how many jobs the worker runs at once; 0 = not
	// sent (the sentinel assumes 1, as the original did).
	Slots int `json:"slots,omitempty"`
	// ProtocolExtensions (extension) lists the extensions the worker
	// implements (ExtAttempt, ExtSlots); unknown names are ignored.
	ProtocolExtensions []string `json:"protocol_extensions,omitempty"`
	// Hostname and PID (extension) say where the worker runs, for operators.
	Hostname string `json:"hostname,omitempty"`
	PID      int    `json:"pid,omitempty"`
	// Envs (extension, ExtPrepareEnv) are the env_hashes the worker has.
	Envs []string `json:"envs,omitempty"`
}

type identifyPayloadJSON IdentifyPayload

// MarshalJSON writes nil Capabilities as [].
func (p IdentifyPayload) MarshalJSON() ([]byte, error) {
	if p.Capabilities == nil {
		p.Capabilities = []string{}
	}
	return marshalNoEscape(identifyPayloadJSON(p))
}

// HasExtension reports whether the worker listed the named extension.
func (p IdentifyPayload) HasExtension(name string) bool {
	for _, e := range p.ProtocolExtensions {
		if e == name {
			return true
		}
	}
	return false
}

// WorkerStatus is the status in a HeartbeatPayload.
type WorkerStatus string

// Worker statuses. Decoding does not reject other values.
const (
	WorkerIdle  WorkerStatus = "IDLE"
	WorkerBusy  WorkerStatus = "BUSY"  // at its concurrency cap
	WorkerAlive WorkerStatus = "ALIVE" // working, below its cap
	// WorkerDraining (extension): shutting down; it finishes its jobs and
	// takes no new one.
	WorkerDraining WorkerStatus = "DRAINING"
)

// HeartbeatPayload is the HEARTBEAT payload (W→S).
type HeartbeatPayload struct {
	Status         WorkerStatus `json:"status"`
	CurrentJobID   *int64       `json:"current_job_id,omitempty"`
	ActiveJobCount int          `json:"active_job_count,omitempty"`
	ActiveJobIDs   []int64      `json:"active_job_ids,omitempty"`
	// Slots (extension) repeats IdentifyPayload.Slots; 0 = not sent.
	Slots int `json:"slots,omitempty"`
	// FreeSlots (extension) is how many more jobs the worker accepts now.
	// It is meaningful only when Slots > 0; then a missing key means 0.
	FreeSlots int `json:"free_slots,omitempty"`
	// Envs (extension, ExtPrepareEnv) are the env_hashes the worker has.
	Envs []string `json:"envs,omitempty"`
}

// ErrorPayload is the ERR payload (both directions).
type ErrorPayload struct {
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// PrepareEnvCommand is the PREPARE_ENV payload (S→W).
type PrepareEnvCommand struct {
	EnvHash         string `json:"env_hash"`
	LockfileContent string `json:"lockfile_content"` // the plugin's requirements (pip requirements text)
	PythonVersion   string `json:"python_version,omitempty"`
}

// EnvReadyPayload is the ENV_READY payload (W→S).
type EnvReadyPayload struct {
	EnvHash         string `json:"env_hash"`
	InterpreterPath string `json:"interpreter_path"`
	Cached          bool   `json:"cached"` // default false
	// Error (extension) says why the environment could not be built (the
	// installer's output); InterpreterPath is empty then.
	Error string `json:"error,omitempty"`
}

// DeployCommand is the DEPLOY payload (publisher CLI → S).
type DeployCommand struct {
	PluginName      string `json:"plugin_name"`
	Version         string `json:"version"`
	SourceCode      string `json:"source_code"`
	LockfileContent string `json:"lockfile_content"` // empty = legacy plugin
	EnvHash         string `json:"env_hash"`
	ArtifactHash    string `json:"artifact_hash"`
	Signature       string `json:"signature"` // hex
	PublisherName   string `json:"publisher_name"`
	PublisherEmail  string `json:"publisher_email,omitempty"`
	AzureOID        string `json:"azure_oid,omitempty"`
	// SystemRequirements is left out when empty.
	SystemRequirements []string `json:"system_requirements,omitempty"`

	// Extensions (casparian publish). PublicKey is the publisher's Ed25519
	// public key (hex) that Signature verifies with, over SigningBytes.
	PublicKey string `json:"public_key,omitempty"`
	// Pattern is a routing glob: files matching it get the tag
	// "auto_<plugin_name>", to which the plugin is subscribed.
	Pattern string `json:"pattern,omitempty"`
	// Subscriptions are more tags the plugin subscribes to.
	Subscriptions []string `json:"subscriptions,omitempty"`
	// Sinks maps output topics to sink URIs.
	Sinks []DeploySink `json:"sinks,omitempty"`
}

// DeploySink is one topic → sink URI of a DEPLOY.
type DeploySink struct {
	Topic string `json:"topic"`
	URI   string `json:"uri"`
}

// SigningBytes is what a DEPLOY's Signature signs: every field that decides
// what runs and where its output goes, each followed by a NUL byte, after a
// domain prefix. The artifact hash covers the source (for a binary plugin,
// its manifest, which holds the binary's SHA-256) and the lockfile.
func (d *DeployCommand) SigningBytes() []byte {
	var b []byte
	add := func(s string) { b = append(append(b, s...), 0) }
	add("casparian-deploy-v1")
	add(d.PluginName)
	add(d.Version)
	add(strings.ToLower(d.ArtifactHash))
	add(strings.ToLower(d.EnvHash))
	add(d.PublisherName)
	add(d.Pattern)
	add(strings.Join(d.Subscriptions, ","))
	for _, k := range d.Sinks {
		add(k.Topic + "=" + k.URI)
	}
	return b
}

// DeployResponse is the ACK payload (S → publisher CLI).
type DeployResponse struct {
	Success  bool   `json:"success"`
	Message  string `json:"message"`
	PluginID *int64 `json:"plugin_id,omitempty"`
	// Attempt (extension), in the ACK of a CONCLUDE (ExtConcludeAck): the
	// attempt the acknowledged CONCLUDE carried; 0 = not sent.
	Attempt int64 `json:"attempt,omitempty"`
}

// NewPayload returns a pointer to a zero value of the payload type op
// carries (e.g. *DispatchCommand for OpDispatch), or nil for opcodes whose
// payload is empty (UNKNOWN, ABORT, RELOAD) and for invalid opcodes. A
// HEARTBEAT with an empty payload is a probe, not a HeartbeatPayload.
func NewPayload(op OpCode) any {
	switch op {
	case OpIdentify:
		return new(IdentifyPayload)
	case OpDispatch:
		return new(DispatchCommand)
	case OpHeartbeat:
		return new(HeartbeatPayload)
	case OpConclude:
		return new(JobReceipt)
	case OpErr:
		return new(ErrorPayload)
	case OpPrepareEnv:
		return new(PrepareEnvCommand)
	case OpEnvReady:
		return new(EnvReadyPayload)
	case OpDeploy:
		return new(DeployCommand)
	case OpAck:
		return new(DeployResponse)
	}
	return nil
}

// Marshal encodes a payload as compact JSON without HTML escaping (the
// bytes serde_json writes for the same struct). Errors are *JSONError.
func Marshal(v any) ([]byte, error) {
	b, err := marshalNoEscape(v)
	if err != nil {
		return nil, &JSONError{Type: typeName(v), Err: err}
	}
	return b, nil
}

// marshalNoEscape is json.Marshal without HTML escaping; the MarshalJSON
// methods use it too, since the outer encoder does not undo inner escaping.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Unmarshal decodes a JSON payload into v, a pointer to a payload type. The
// payload must be a single JSON object (a bare null, array or trailing data
// is an error); unknown keys are ignored and null fields keep their zero
// value or default. JobReceipt.Status must be one of the four statuses. It
// does not check a size limit: Decoder.Decode already did. Errors are
// *JSONError.
func Unmarshal(data []byte, v any) error {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return &JSONError{Type: typeName(v), Err: fmt.Errorf("payload is not a JSON object")}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return &JSONError{Type: typeName(v), Err: err}
	}
	if val, ok := v.(interface{ validate() error }); ok {
		if err := val.validate(); err != nil {
			return &JSONError{Type: typeName(v), Err: err}
		}
	}
	return nil
}

func typeName(v any) string {
	t := reflect.TypeOf(v)
	if t == nil {
		return "nil"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name()
}
