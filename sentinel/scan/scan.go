// Package scan turns the files under the source roots into file versions
// and jobs: it walks every active root (in parallel, without following
// symlinks), skips ignored paths, finds the files whose size or mtime
// changed since the last scan, hashes them (SHA-256, streamed, in
// parallel), tags them with the routing rules and records them with
// store.Promote, which creates one job per subscribed plugin. Unchanged
// content creates nothing.
package scan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

// Options tune a scan. Zero values mean the defaults.
type Options struct {
	// Workers hash files in parallel. Default: the number of CPUs.
	Workers int
	// Logger receives the warnings (also returned in the Report). nil discards.
	Logger *slog.Logger
	// open opens a file for hashing (tests inject failures).
	open func(string) (io.ReadCloser, error)
}

// Report is what a scan did.
type Report struct {
	Roots       int      // source roots scanned
	Files       int      // regular files seen (not ignored)
	Ignored     int      // paths skipped by ignore rules
	Unchanged   int      // files whose size and mtime had not moved
	Hashed      int      // files read and hashed
	NewVersions int      // file versions created
	Jobs        []int64  // jobs created
	Warnings    []string // what was skipped, and why
}

func (r *Report) warn(log *slog.Logger, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.Warnings = append(r.Warnings, msg)
	log.Warn(msg)
}

// Scan scans every active source root once.
func Scan(ctx context.Context, st *store.Store, opts Options) (Report, error) {
	if opts.Workers <= 0 {
		opts.Workers = runtime.NumCPU()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.open == nil {
		opts.open = func(p string) (io.ReadCloser, error) { return os.Open(p) }
	}
	var rep Report
	roots, err := st.SourceRoots(ctx)
	if err != nil {
		return rep, err
	}
	rules, err := st.RoutingRules(ctx)
	if err != nil {
		return rep, err
	}
	var tagRules []TagRule
	for _, r := range rules {
		tr, err := CompileTagRule(r.Pattern, r.Tag)
		if err != nil {
			rep.warn(opts.Logger, "routing rule %d: %v; it is skipped", r.ID, err)
			continue
		}
		tagRules = append(tagRules, tr)
	}
	// Who subscribes to which tags, read once for the whole scan.
	routing, err := st.Routing(ctx)
	if err != nil {
		return rep, err
	}
	for _, root := range roots {
		if !root.Active {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := scanRoot(ctx, st, root, tagRules, routing, opts, &rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

type candidate struct {
	rel, full string
	size      int64
	mtime     time.Time
}

func scanRoot(ctx context.Context, st *store.Store, root store.SourceRoot, tagRules []TagRule, routing store.Routing, opts Options, rep *Report) error {
	log := opts.Logger
	if fi, err := os.Stat(root.Path); err != nil || !fi.IsDir() {
		why := "it is not a directory"
		if err != nil {
			why = err.Error()
		}
		rep.warn(log, "source root %s cannot be scanned (%s): its files and jobs are kept; restore it or deactivate it", root.Path, why)
		return nil
	}
	rep.Roots++
	patterns, err := st.IgnoreRules(ctx, root.ID)
	if err != nil {
		return err
	}
	ig, err := NewIgnore(DefaultIgnore, patterns)
	if err != nil {
		rep.warn(log, "source root %s: %v; scanning with the default ignore rules only", root.Path, err)
		ig, _ = NewIgnore(DefaultIgnore)
	}
	known, err := st.Locations(ctx, root.ID)
	if err != nil {
		return err
	}
	var dirty []candidate
	walkErr := filepath.WalkDir(root.Path, func(full string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rel, _ := filepath.Rel(root.Path, full)
		rel = filepath.ToSlash(rel)
		if err != nil {
			rep.warn(log, "%s: %v; skipped", full, err)
			if d != nil && d.IsDir() && rel != "." {
				return fs.SkipDir
			}
			return nil
		}
		if rel == "." {
			return nil
		}
		if ig.Match(rel, d.IsDir()) {
			rep.Ignored++
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			rep.warn(log, "%s is a symbolic link: links are not followed (no loops, no files outside the root); skipped", full)
			return nil
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			rep.warn(log, "%s is not a regular file (%s); skipped", full, d.Type())
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			rep.warn(log, "%s: %v; skipped", full, err)
			return nil
		}
		rep.Files++
		c := candidate{rel: rel, full: full, size: fi.Size(), mtime: fi.ModTime()}
		if l, ok := known[rel]; ok && l.VersionID != 0 && l.Size == c.size && sameTime(l.MTime, c.mtime) {
			rep.Unchanged++
			return nil
		}
		dirty = append(dirty, c)
		return nil
	})
	if walkErr != nil {
		return walkErr
	}
	return hashAndRecord(ctx, st, root, tagRules, routing, dirty, opts, rep)
}

// sameTime compares a stored mtime (float seconds) with a file's.
func sameTime(stored float64, t time.Time) bool {
	return math.Abs(stored-float64(t.UnixNano())/1e9) < 1e-6
}

// hashAndRecord hashes the dirty files in parallel and records each.
func hashAndRecord(ctx context.Context, st *store.Store, root store.SourceRoot, tagRules []TagRule, routing store.Routing,
	dirty []candidate, opts Options, rep *Report) error {
	jobs := make(chan candidate)
	var mu sync.Mutex // guards rep and first
	var first error
	var wg sync.WaitGroup
	for range min(opts.Workers, max(1, len(dirty))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range jobs {
				sum, err := hashStable(c, opts.open)
				mu.Lock()
				if err != nil {
					rep.warn(opts.Logger, "%s: %v", c.full, err)
					mu.Unlock()
					continue
				}
				rep.Hashed++
				mu.Unlock()
				pr, err := st.PromoteRouted(ctx, root.ID, store.Observation{RelPath: c.rel, Hash: sum, Size: c.size,
					ModTime: c.mtime, Tags: Tags(tagRules, c.rel)}, routing)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				if pr.NewVersion {
					rep.NewVersions++
				}
				rep.Jobs = append(rep.Jobs, pr.Jobs...)
				mu.Unlock()
			}
		}()
	}
	for _, c := range dirty {
		if ctx.Err() != nil {
			break
		}
		jobs <- c
	}
	close(jobs)
	wg.Wait()
	slices.Sort(rep.Jobs)
	if first != nil {
		return first
	}
	return ctx.Err()
}

// errChanged marks a file that changed while it was hashed.
var errChanged = errors.New("changed while it was being hashed; the next scan picks it up")

// hashStable streams the file through SHA-256 and checks that its size and
// mtime did not move meanwhile.
func hashStable(c candidate, open func(string) (io.ReadCloser, error)) (string, error) {
	f, err := open(c.full)
	if err != nil {
		return "", fmt.Errorf("cannot be read (%v); skipped", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("read failed (%v); skipped", err)
	}
	fi, err := os.Stat(c.full)
	if err != nil {
		return "", fmt.Errorf("vanished while it was being hashed; skipped")
	}
	if n != c.size || fi.Size() != c.size || !fi.ModTime().Equal(c.mtime) {
		return "", errChanged
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func dedupe(ss []string) []string {
	slices.Sort(ss)
	return slices.Compact(ss)
}
