package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestActiveManifestAndConfiguredSinks(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	if _, _, err := s.ActiveManifest(ctx, "p"); !errors.Is(err, ErrNoActiveManifest) {
		t.Fatalf("no manifest: %v, want ErrNoActiveManifest", err)
	}
	m1, err := s.AddPlugin(ctx, PluginSpec{Name: "p", Version: "1.0", SourceCode: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if id, v, err := s.ActiveManifest(ctx, "p"); err != nil || id != m1 || v != "1.0" {
		t.Errorf("ActiveManifest = %d %q %v; want %d 1.0", id, v, err, m1)
	}
	c.Add(time.Second)
	m2, err := s.AddPlugin(ctx, PluginSpec{Name: "p", Version: "2.0", SourceCode: "two"})
	if err != nil {
		t.Fatal(err)
	}
	if id, v, err := s.ActiveManifest(ctx, "p"); err != nil || id != m2 || v != "2.0" {
		t.Errorf("ActiveManifest = %d %q %v; want %d 2.0", id, v, err, m2)
	}
	// A REJECTED manifest does not count.
	if _, err := s.w.Exec(`UPDATE cf_plugin_manifest SET status = 'REJECTED' WHERE plugin_name = 'p'`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ActiveManifest(ctx, "p"); !errors.Is(err, ErrNoActiveManifest) {
		t.Errorf("rejected only: %v, want ErrNoActiveManifest", err)
	}

	if ks, err := s.ConfiguredSinks(ctx, "p"); err != nil || len(ks) != 0 {
		t.Errorf("no sinks = %+v, %v (the default sink is not configured)", ks, err)
	}
	if err := s.AddSink(ctx, "p", Sink{Topic: "rows", URI: "parquet://rows.parquet"}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSink(ctx, "other", Sink{Topic: "x", URI: "parquet://x.parquet"}); err != nil {
		t.Fatal(err)
	}
	ks, err := s.ConfiguredSinks(ctx, "p")
	want := []Sink{{Topic: "rows", URI: "parquet://rows.parquet", Mode: "append"}}
	if err != nil || !reflect.DeepEqual(ks, want) {
		t.Errorf("ConfiguredSinks = %+v, %v; want %+v", ks, err, want)
	}
}

func TestQueuedAmong(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	enqueueN(t, s, "a", 0, 0)
	done := enqueueN(t, s, "b", 0)
	if _, err := s.w.Exec(`UPDATE cf_processing_queue SET status = 'COMPLETED' WHERE id = ?`, done[0]); err != nil {
		t.Fatal(err)
	}
	got, err := s.QueuedAmong(ctx, []string{"a", "b", "c", "it's"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got["a"] {
		t.Errorf("QueuedAmong = %v, want only a", got)
	}
	if got, err := s.QueuedAmong(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("QueuedAmong(nil) = %v, %v", got, err)
	}
}
