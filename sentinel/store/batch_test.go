package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestClaimNOrderCapabilitiesAndLimit(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	a := enqueueN(t, s, "a", 0, 5, 0, 5)
	b := enqueueN(t, s, "b", 9)
	got, err := s.ClaimN(ctx, "w1", []string{"a"}, time.Minute, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Priority 5 first (ids a[1], a[3]), then the lowest id of priority 0.
	want := []int64{a[1], a[3], a[0]}
	if len(got) != len(want) {
		t.Fatalf("claimed %d jobs, want %d", len(got), len(want))
	}
	for i, c := range got {
		if c.ID != want[i] || c.Attempt != 1 || c.LeaseOwner != "w1" || c.PluginName != "a" {
			t.Errorf("claim %d = %+v, want id %d attempt 1 by w1", i, c, want[i])
		}
		if j := mustGet(t, s, c.ID); j.Status != StatusRunning || j.LeaseOwner != "w1" {
			t.Errorf("[Job %d] %s owned by %q after ClaimN", c.ID, j.Status, j.LeaseOwner)
		}
	}
	// b's job (higher priority) was not claimable by an "a" worker.
	if j := mustGet(t, s, b[0]); j.Status != StatusQueued {
		t.Errorf("job of plugin b is %s, want QUEUED", j.Status)
	}
	rest, err := s.ClaimN(ctx, "w2", []string{"*"}, time.Minute, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 2 || rest[0].ID != b[0] || rest[1].ID != a[2] {
		t.Errorf("second ClaimN = %v, want [%d %d]", ids(rest), b[0], a[2])
	}
	if more, err := s.ClaimN(ctx, "w2", []string{"*"}, time.Minute, 10); err != nil || len(more) != 0 {
		t.Errorf("ClaimN on an empty queue = %v, %v", ids(more), err)
	}
	if none, err := s.ClaimN(ctx, "w2", nil, time.Minute, 10); err != nil || none != nil {
		t.Errorf("ClaimN without capabilities = %v, %v", ids(none), err)
	}
}

func ids(cs []*Claimed) []int64 {
	var out []int64
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

func TestConcludeManyFencesEachEntry(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	enqueueN(t, s, "p", 0, 0, 0)
	cs, err := s.ClaimN(ctx, "w", []string{"*"}, time.Minute, 3)
	if err != nil || len(cs) != 3 {
		t.Fatalf("ClaimN = %d, %v", len(cs), err)
	}
	trs, errs := s.ConcludeMany(ctx, []Conclusion{
		{ID: cs[0].ID, Attempt: cs[0].Attempt, Outcome: Outcome{Status: ReceiptSuccess, Metrics: map[string]int64{"rows": 3}}},
		{ID: cs[1].ID, Attempt: cs[1].Attempt + 7, Outcome: Outcome{Status: ReceiptSuccess}}, // stale
		{ID: cs[2].ID, Attempt: cs[2].Attempt, Outcome: Outcome{Status: ReceiptRejected}},
		{ID: 999, Attempt: 1, Outcome: Outcome{Status: ReceiptSuccess}}, // unknown
	})
	if errs[0] != nil || trs[0].To != StatusCompleted {
		t.Errorf("entry 0: %v %+v", errs[0], trs[0])
	}
	if !errors.Is(errs[1], ErrStaleAttempt) {
		t.Errorf("entry 1 error = %v, want ErrStaleAttempt", errs[1])
	}
	if errs[2] != nil || trs[2].To != StatusQueued || trs[2].RetryCount != 1 {
		t.Errorf("entry 2: %v %+v", errs[2], trs[2])
	}
	if !errors.Is(errs[3], ErrJobNotFound) {
		t.Errorf("entry 3 error = %v, want ErrJobNotFound", errs[3])
	}
	if j := mustGet(t, s, cs[1].ID); j.Status != StatusRunning {
		t.Errorf("the stale entry changed its job to %s", j.Status)
	}
	if j := mustGet(t, s, cs[0].ID); j.Status != StatusCompleted || j.ResultJSON == "" {
		t.Errorf("entry 0's job is %s with result %q", j.Status, j.ResultJSON)
	}
	// A batch that fails as a whole (cancelled context) writes nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, errs = s.ConcludeMany(cctx, []Conclusion{{ID: cs[1].ID, Attempt: cs[1].Attempt, Outcome: Outcome{Status: ReceiptSuccess}}})
	if errs[0] == nil {
		t.Error("ConcludeMany with a cancelled context succeeded")
	}
	if j := mustGet(t, s, cs[1].ID); j.Status != StatusRunning {
		t.Errorf("a failed batch changed its job to %s", j.Status)
	}
}
