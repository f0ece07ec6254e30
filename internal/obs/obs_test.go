package obs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "warn", "json", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "job_id", 7)
	var rec map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &rec); err != nil {
		t.Fatalf("not one JSON record: %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["job_id"] != float64(7) {
		t.Errorf("record = %v", rec)
	}

	t.Setenv(EnvLogLevel, "debug")
	t.Setenv(EnvLogFormat, "text")
	buf.Reset()
	log, err = NewLogger(&buf, "", "", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("from env")
	if !strings.Contains(buf.String(), "level=DEBUG msg=\"from env\"") {
		t.Errorf("env level/format not applied: %q", buf.String())
	}

	if _, err := NewLogger(io.Discard, "loud", "", slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "debug, info, warn or error") {
		t.Errorf("bad level error = %v", err)
	}
	if _, err := NewLogger(io.Discard, "", "xml", slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "text or json") {
		t.Errorf("bad format error = %v", err)
	}
}

func TestServer(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "casparian_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	healthy := true
	srv, err := Listen("127.0.0.1:0", reg, func(context.Context) error {
		if healthy {
			return nil
		}
		return errors.New("database: locked")
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + srv.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "casparian_test_total 3") ||
		!strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("/metrics = %d\n%s", code, body)
	}
	if code, body := get("/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz healthy = %d %q", code, body)
	}
	healthy = false
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "database: locked") {
		t.Errorf("/healthz unhealthy = %d %q", code, body)
	}
	if _, err := Listen(srv.Addr().String(), reg, nil, nil); err == nil {
		t.Error("listening twice on one address succeeded")
	}
}
