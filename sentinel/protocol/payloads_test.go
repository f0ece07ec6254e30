package protocol

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestJSONCompat decodes payloads written the way the original peers wrote
// them: Python json.dumps (spaces after separators, null for optional
// fields, Python's key order), Rust serde_json (optional fields left out,
// defaults omitted), and with keys this package does not know.
func TestJSONCompat(t *testing.T) {
	cases := []struct {
		name string
		in   string
		into any
		want any
	}{
		{"python dispatch with nulls", `{"plugin_name": "p", "file_path": "/in/a.csv", "sinks": [{"topic": "output", "uri": "parquet://p_output.parquet", "mode": null, "schema_def": null}], "file_version_id": 3, "env_hash": "system", "source_code": "x = 1", "artifact_hash": null}`,
			new(DispatchCommand), &DispatchCommand{PluginName: "p", FilePath: "/in/a.csv",
				Sinks:         []SinkConfig{{Topic: "output", URI: "parquet://p_output.parquet", Mode: ModeAppend}},
				FileVersionID: 3, EnvHash: "system", SourceCode: "x = 1"}},
		{"rust dispatch, sink mode missing, unknown key", `{"plugin_name":"p","file_path":"/a","sinks":[{"topic":"t","uri":"u"}],"file_version_id":1,"env_hash":"system","source_code":"","config_overrides":{"x":1}}`,
			new(DispatchCommand), &DispatchCommand{PluginName: "p", FilePath: "/a", Sinks: []SinkConfig{{Topic: "t", URI: "u", Mode: ModeAppend}},
				FileVersionID: 1, EnvHash: "system"}},
		{"sink mode replace kept", `{"topic":"t","uri":"u","mode":"replace","schema_def":"s"}`,
			new(SinkConfig), &SinkConfig{Topic: "t", URI: "u", Mode: ModeReplace, SchemaDef: "s"}},
		{"python receipt with null error", `{"status": "SUCCESS", "metrics": {"rows": 5}, "artifacts": [{"topic": "output", "uri": "parquet://x"}], "error_message": null}`,
			new(JobReceipt), &JobReceipt{Status: StatusSuccess, Metrics: map[string]int64{"rows": 5},
				Artifacts: []map[string]string{{"topic": "output", "uri": "parquet://x"}}}},
		{"rust rejected receipt", `{"status":"REJECTED","metrics":{},"artifacts":[],"error_message":"Worker at capacity"}`,
			new(JobReceipt), &JobReceipt{Status: StatusRejected, Metrics: map[string]int64{}, Artifacts: []map[string]string{}, ErrorMessage: "Worker at capacity"}},
		{"aborted receipt, null lists", `{"status":"ABORTED","metrics":null,"artifacts":null}`,
			new(JobReceipt), &JobReceipt{Status: StatusAborted}},
		{"python identify, null worker_id", `{"capabilities": ["*"], "worker_id": null}`,
			new(IdentifyPayload), &IdentifyPayload{Capabilities: []string{"*"}}},
		{"identify with extensions", `{"capabilities":["a","b"],"worker_id":"w","slots":4,"protocol_extensions":["attempt","slots","future"]}`,
			new(IdentifyPayload), &IdentifyPayload{Capabilities: []string{"a", "b"}, WorkerID: "w", Slots: 4, ProtocolExtensions: []string{"attempt", "slots", "future"}}},
		{"python heartbeat", `{"status": "IDLE", "current_job_id": null, "active_job_count": 0, "active_job_ids": []}`,
			new(HeartbeatPayload), &HeartbeatPayload{Status: WorkerIdle, ActiveJobIDs: []int64{}}},
		{"rust heartbeat, defaults omitted", `{"status":"BUSY","current_job_id":7}`,
			new(HeartbeatPayload), &HeartbeatPayload{Status: WorkerBusy, CurrentJobID: i64(7)}},
		{"python error, null traceback", `{"message": "boom", "traceback": null}`,
			new(ErrorPayload), &ErrorPayload{Message: "boom"}},
		{"prepare env, null python version", `{"env_hash": "h", "lockfile_content": "version = 1", "python_version": null}`,
			new(PrepareEnvCommand), &PrepareEnvCommand{EnvHash: "h", LockfileContent: "version = 1"}},
		{"env ready, cached missing", `{"env_hash":"h","interpreter_path":"/bin/python"}`,
			new(EnvReadyPayload), &EnvReadyPayload{EnvHash: "h", InterpreterPath: "/bin/python"}},
		{"python deploy with nulls", `{"plugin_name": "p", "version": "1.0", "source_code": "s", "lockfile_content": "", "env_hash": "e", "artifact_hash": "a", "signature": "00", "publisher_name": "ann", "publisher_email": null, "azure_oid": null, "system_requirements": null}`,
			new(DeployCommand), &DeployCommand{PluginName: "p", Version: "1.0", SourceCode: "s", EnvHash: "e", ArtifactHash: "a", Signature: "00", PublisherName: "ann"}},
		{"rust ack without plugin id", `{"success":false,"message":"signature mismatch"}`,
			new(DeployResponse), &DeployResponse{Message: "signature mismatch"}},
		{"ack with plugin id", `{"success":true,"message":"ok","plugin_id":3}`,
			new(DeployResponse), &DeployResponse{Success: true, Message: "ok", PluginID: i64(3)}},
		{"leading whitespace", " \n{\"message\":\"m\"}\n", new(ErrorPayload), &ErrorPayload{Message: "m"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := Unmarshal([]byte(c.in), c.into); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.into, c.want) {
				t.Fatalf("got  %+v\nwant %+v", c.into, c.want)
			}
		})
	}
}

// TestJSONEncodeRules checks what a Rust peer needs: optional fields left
// out when empty, required lists and maps never null, the mode default, and
// extensions absent when zero (so v4 peers see the original payload).
func TestJSONEncodeRules(t *testing.T) {
	cases := []struct {
		v    any
		want string
	}{
		{DispatchCommand{}, `{"plugin_name":"","file_path":"","sinks":[],"file_version_id":0,"env_hash":"","source_code":""}`},
		{DispatchCommand{Sinks: []SinkConfig{{Topic: "t", URI: "u"}}, Attempt: 3},
			`{"plugin_name":"","file_path":"","sinks":[{"topic":"t","uri":"u","mode":"append"}],"file_version_id":0,"env_hash":"","source_code":"","attempt":3}`},
		{JobReceipt{Status: StatusSuccess}, `{"status":"SUCCESS","metrics":{},"artifacts":[]}`},
		{&JobReceipt{Status: StatusFailed, ErrorMessage: "x", Attempt: 2}, `{"status":"FAILED","metrics":{},"artifacts":[],"error_message":"x","attempt":2}`},
		{IdentifyPayload{}, `{"capabilities":[]}`},
		{HeartbeatPayload{Status: WorkerIdle}, `{"status":"IDLE"}`},
		{HeartbeatPayload{Status: WorkerBusy, CurrentJobID: i64(0), Slots: 1}, `{"status":"BUSY","current_job_id":0,"slots":1}`},
		{ErrorPayload{Message: "m"}, `{"message":"m"}`},
		{PrepareEnvCommand{EnvHash: "h"}, `{"env_hash":"h","lockfile_content":""}`},
		{EnvReadyPayload{}, `{"env_hash":"","interpreter_path":"","cached":false}`},
		{DeployCommand{}, `{"plugin_name":"","version":"","source_code":"","lockfile_content":"","env_hash":"","artifact_hash":"","signature":"","publisher_name":""}`},
		{DeployResponse{Success: true}, `{"success":true,"message":""}`},
	}
	for _, c := range cases {
		got, err := Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("Marshal(%T):\n got %s\nwant %s", c.v, got, c.want)
		}
	}
}

func TestJSONErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		into any
		msg  string
	}{
		{"empty", ``, new(ErrorPayload), "not a JSON object"},
		{"null", `null`, new(ErrorPayload), "not a JSON object"},
		{"array", `[]`, new(IdentifyPayload), "not a JSON object"},
		{"truncated", `{"message":`, new(ErrorPayload), "unexpected end"},
		{"trailing data", `{"message":"a"} {}`, new(ErrorPayload), "after top-level value"},
		{"wrong type", `{"capabilities":"*"}`, new(IdentifyPayload), "cannot unmarshal"},
		{"float metric", `{"status":"SUCCESS","metrics":{"rows":1.5},"artifacts":[]}`, new(JobReceipt), "cannot unmarshal"},
		{"unknown status", `{"status":"DONE","metrics":{},"artifacts":[]}`, new(JobReceipt), `unknown status "DONE"`},
		{"missing status", `{"metrics":{},"artifacts":[]}`, new(JobReceipt), `unknown status ""`},
		{"lowercase status", `{"status":"success"}`, new(JobReceipt), "unknown status"},
		{"bad sink", `{"sinks":[1]}`, new(DispatchCommand), "cannot unmarshal"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Unmarshal([]byte(c.in), c.into)
			var je *JSONError
			if !errors.Is(err, ErrJSON) || !errors.As(err, &je) {
				t.Fatalf("got %v, want a *JSONError", err)
			}
			if !strings.Contains(err.Error(), c.msg) || !strings.HasPrefix(err.Error(), "protocol: invalid JSON payload for ") {
				t.Fatalf("error %q does not mention %q", err, c.msg)
			}
			if je.Type != reflect.TypeOf(c.into).Elem().Name() {
				t.Fatalf("Type = %q", je.Type)
			}
		})
	}
}

func TestNewPayload(t *testing.T) {
	want := map[OpCode]any{
		OpIdentify: &IdentifyPayload{}, OpDispatch: &DispatchCommand{}, OpHeartbeat: &HeartbeatPayload{},
		OpConclude: &JobReceipt{}, OpErr: &ErrorPayload{}, OpPrepareEnv: &PrepareEnvCommand{},
		OpEnvReady: &EnvReadyPayload{}, OpDeploy: &DeployCommand{}, OpAck: &DeployResponse{},
	}
	for op := OpCode(0); op < 255; op++ {
		got := NewPayload(op)
		if w, ok := want[op]; ok {
			if reflect.TypeOf(got) != reflect.TypeOf(w) {
				t.Errorf("NewPayload(%v) = %T, want %T", op, got, w)
			}
		} else if got != nil {
			t.Errorf("NewPayload(%v) = %T, want nil", op, got)
		}
	}
}

func TestHasExtension(t *testing.T) {
	p := IdentifyPayload{ProtocolExtensions: []string{ExtAttempt}}
	if !p.HasExtension(ExtAttempt) || p.HasExtension(ExtSlots) {
		t.Fatal("HasExtension wrong")
	}
}
