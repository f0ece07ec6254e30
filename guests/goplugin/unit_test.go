package goplugin

import (
	"log/slog"
	"testing"
)

func TestParseHandshake(t *testing.T) {
	for _, c := range []struct {
		line        string
		core, app   int
		proto       string
		isHandshake bool
	}{
		{"1|1|unix|/tmp/plugin123|grpc|MIIB...", 1, 1, "grpc", true},
		{"1|2|tcp|127.0.0.1:1234|grpc", 1, 2, "grpc", true},
		{"1|1|unix|/tmp/p", 1, 1, "netrpc", true},
		{"hello from main", 0, 0, "", false},
		{"x1|1|unix|/tmp/p|grpc", 0, 0, "", false},
		{"1|1|pipe|/tmp/p|grpc", 0, 0, "", false},
	} {
		core, app, proto, ok := parseHandshake(c.line)
		if ok != c.isHandshake || core != c.core || app != c.app || proto != c.proto {
			t.Errorf("parseHandshake(%q) = %d %d %q %v", c.line, core, app, proto, ok)
		}
	}
}

func TestParseHclog(t *testing.T) {
	rec, ok := parseHclog(`{"@level":"warn","@message":"disk slow","@module":"plugin.io","@timestamp":"2024-01-01T00:00:00Z","ms":12,"path":"/x"}`)
	if !ok || rec.Level != slog.LevelWarn || rec.Message != "disk slow" || rec.Stream != "stderr" {
		t.Fatalf("%+v %v", rec, ok)
	}
	got := map[string]string{}
	for _, a := range rec.Attrs {
		got[a.Key] = a.Value.String()
	}
	if got["logger"] != "plugin.io" || got["ms"] != "12" || got["path"] != "/x" || len(got) != 3 {
		t.Errorf("attrs %v", got)
	}
	if rec, ok := parseHclog("[DEBUG] plugin: starting"); !ok || rec.Level != slog.LevelDebug || rec.Message != "plugin: starting" {
		t.Errorf("text line: %+v %v", rec, ok)
	}
	for _, line := range []string{"plain text", `{"not":"hclog"}`, "{broken json"} {
		if _, ok := parseHclog(line); ok {
			t.Errorf("%q parsed as hclog", line)
		}
	}
}
