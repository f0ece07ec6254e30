package scan

import (
	"context"
	"log/slog"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

// Loop scans every interval until ctx ends (the first scan at once), so a
// file dropped into a watched folder becomes a job on its own. After a scan
// that queued jobs it calls queued (the sentinel's Wake). A warning is
// logged the first time it appears, not at every scan.
func Loop(ctx context.Context, st *store.Store, interval time.Duration, opts Options, queued func()) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Logger = slog.New(slog.DiscardHandler) // warnings are logged below, once each
	warned := map[string]bool{}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		rep, err := Scan(ctx, st, opts)
		if ctx.Err() != nil {
			return
		}
		seen := map[string]bool{}
		for _, w := range rep.Warnings {
			seen[w] = true
			if !warned[w] {
				log.Warn(w)
			}
		}
		warned = seen
		if err != nil {
			log.Error("scan failed; retrying at the next interval", "error", err)
		}
		if rep.NewVersions > 0 || len(rep.Jobs) > 0 {
			log.Info("scan found new content", "roots", rep.Roots, "files", rep.Files, "new_versions", rep.NewVersions,
				"jobs", len(rep.Jobs), "duration", time.Since(start).Round(time.Millisecond))
		} else {
			log.Debug("scan: nothing new", "roots", rep.Roots, "files", rep.Files, "duration", time.Since(start).Round(time.Millisecond))
		}
		if len(rep.Jobs) > 0 && queued != nil {
			queued()
		}
		t.Reset(interval)
	}
}
