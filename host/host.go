// Package host runs jobs: one job is one input file through one plugin. It
// resolves the plugin's guest kind, runs it under a deadline, routes every
// (topic, batch) the plugin emits to that topic's sink, and commits all
// outputs only when the plugin succeeded. `casparian run` and the worker
// daemon both run jobs through this package.
package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/sink"
	"github.com/casparianflow/casparian/internal/fault"
	"github.com/casparianflow/casparian/internal/filehash"
)

// Version is the product version written into provenance metadata.
var Version = "0.1.0-dev"

// Job statuses, as the protocol's JobReceipt spells them.
const (
	StatusSuccess = "SUCCESS"
	StatusFailed  = "FAILED"
	StatusAborted = "ABORTED"
)

// Config configures a Host. Zero values take the documented defaults.
type Config struct {
	// Runtimes maps each guest kind to its runtime. Required: at least one.
	Runtimes map[guest.Kind]guest.Runtime
	// OutputDir is the root of relative sink paths. Default ".".
	OutputDir string
	// Sink configures the Parquet writer (compression, row-group bounds).
	Sink sink.Options
	// JobTimeout bounds one job's run; 0 means no limit besides the guest's own timeouts.
	JobTimeout time.Duration
	// Logger receives the host's and the plugins' logs. nil discards them.
	Logger *slog.Logger
}

// Host runs jobs. It is safe for concurrent use.
type Host struct {
	cfg Config
	log *slog.Logger
}

// New validates cfg and returns a Host.
func New(cfg Config) (*Host, error) {
	if len(cfg.Runtimes) == 0 {
		return nil, errors.New("host: no guest runtimes configured")
	}
	if cfg.OutputDir == "" {
		cfg.OutputDir = "."
	}
	abs, err := filepath.Abs(cfg.OutputDir)
	if err != nil {
		return nil, fmt.Errorf("host: output dir: %w", err)
	}
	cfg.OutputDir = abs
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Host{cfg: cfg, log: log}, nil
}

// SinkConfig routes one topic to a sink URI.
type SinkConfig struct {
	Topic string
	URI   string
}

// Job is one input file through one plugin.
type Job struct {
	// ID identifies the job in errors, logs, file names and lineage columns.
	ID int64
	// FileVersionID is written to the _file_version_id lineage column.
	FileVersionID int64
	// InputPath is the file to process.
	InputPath string
	// InputHash is the input's SHA-256 hex; computed when empty.
	InputHash string
	// Plugin is the plugin to run.
	Plugin guest.Plugin
	// Config is passed to the plugin.
	Config map[string]any
	// Sinks routes topics to URIs; a topic without an entry goes to
	// parquet://<topic> (a directory under the output dir).
	Sinks []SinkConfig
	// FileStem, if set, names Parquet files in directory sinks (<dir>/<FileStem>.parquet).
	FileStem string
}

// Receipt is the outcome of a job.
type Receipt struct {
	JobID  int64
	Status string
	// Rows counts committed rows per topic.
	Rows map[string]int64
	// Artifacts lists the committed outputs in commit order: Parquet topics
	// first, then SQLite ones, each group sorted by topic.
	Artifacts []sink.Artifact
	Duration  time.Duration
	// GuestTime is the time the plugin ran (start to end of stream);
	// CommitTime the time spent committing outputs. Both are zero when the
	// job failed before reaching that phase.
	GuestTime  time.Duration
	CommitTime time.Duration
	// Err is nil on success, else an error whose text starts with "[Job N]".
	Err error
}

// TotalRows sums Rows.
func (r Receipt) TotalRows() int64 {
	var n int64
	for _, v := range r.Rows {
		n += v
	}
	return n
}

// JobFailure is the error of a failed job. Its message carries the job id;
// errors.Is/As reach the *guest.Error inside.
type JobFailure struct {
	JobID int64
	Err   error
}

func (e *JobFailure) Error() string { return guest.JobError(e.JobID, e.Err) }
func (e *JobFailure) Unwrap() error { return e.Err }

// Run runs one job to completion and never panics on plugin misbehaviour.
// ctx cancels the job (the guest is stopped, nothing is committed).
func (h *Host) Run(ctx context.Context, job Job) Receipt {
	start := time.Now()
	rc := Receipt{JobID: job.ID, Rows: map[string]int64{}}
	err := h.run(ctx, job, &rc)
	rc.Duration = time.Since(start)
	if err != nil {
		rc.Status = StatusFailed
		if errors.Is(err, guest.ErrCancelled) {
			rc.Status = StatusAborted
		}
		rc.Rows = map[string]int64{}
		rc.Artifacts = nil
		rc.Err = &JobFailure{JobID: job.ID, Err: err}
		// Info, not Warn: the caller (CLI or worker) decides how loudly to report it.
		h.log.Info("job failed", "job_id", job.ID, "plugin", job.Plugin.Name, "input", job.InputPath, "error", err.Error())
		return rc
	}
	rc.Status = StatusSuccess
	h.log.Info("job done", "job_id", job.ID, "plugin", job.Plugin.Name, "input", job.InputPath,
		"rows", rc.TotalRows(), "outputs", len(rc.Artifacts), "duration", rc.Duration.Round(time.Millisecond))
	return rc
}

func (h *Host) run(ctx context.Context, job Job, rc *Receipt) error {
	rt, ok := h.cfg.Runtimes[job.Plugin.Kind]
	if !ok {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("no runtime for guest kind %q (plugin %s)", job.Plugin.Kind, job.Plugin.Name),
			Hint:    "this host was started without that guest kind"}
	}
	input, err := filepath.Abs(job.InputPath)
	if err != nil {
		return guest.AsError(err, guest.ErrInput)
	}
	st, err := os.Stat(input)
	if err != nil {
		return &guest.Error{Kind: guest.ErrInput, ExitCode: -1, Message: fmt.Sprintf("input file %s: %v", input, errors.Unwrap(err)),
			Hint: "check that the file exists and is readable", Err: err}
	}
	if !st.Mode().IsRegular() {
		return &guest.Error{Kind: guest.ErrInput, ExitCode: -1, Message: fmt.Sprintf("input %s is not a regular file", input)}
	}
	if job.InputHash == "" {
		if job.InputHash, err = filehash.File(input); err != nil {
			return &guest.Error{Kind: guest.ErrInput, ExitCode: -1, Message: fmt.Sprintf("read input %s: %v", input, err), Err: err}
		}
	}

	if job.Plugin.Hash == "" { // provenance names the exact plugin artifact
		switch {
		case job.Plugin.Source != nil:
			sum := sha256.Sum256(job.Plugin.Source)
			job.Plugin.Hash = hex.EncodeToString(sum[:])
		case job.Plugin.Path != "":
			if job.Plugin.Hash, err = filehash.Sum(job.Plugin.Path); err != nil {
				return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Message: fmt.Sprintf("read plugin %s: %v", job.Plugin.Path, err),
					Hint: "check the plugin path", Err: err}
			}
		}
	}
	inst, err := rt.Load(ctx, job.Plugin)
	if err != nil {
		return err
	}
	defer inst.Close(context.WithoutCancel(ctx))

	runCtx := ctx
	if h.cfg.JobTimeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, h.cfg.JobTimeout)
		defer cancel()
	}
	out := &jobOutput{h: h, job: job, input: input, writers: map[string]sink.Writer{},
		log: h.log.With("job_id", job.ID, "plugin", job.Plugin.Name, "guest", string(job.Plugin.Kind))}
	defer out.abortAll()

	guestStart := time.Now()
	err = inst.Run(runCtx, guest.Input{JobID: job.ID, FileVersionID: job.FileVersionID, Path: input, Config: job.Config}, out)
	rc.GuestTime = time.Since(guestStart)
	if err != nil {
		return err
	}
	commitStart := time.Now()
	arts, err := out.commitAll(ctx)
	rc.CommitTime = time.Since(commitStart)
	if err == nil {
		fault.Hit(fault.AfterCommit)
	}
	if err != nil {
		return err
	}
	rc.Artifacts = arts
	for _, a := range arts {
		rc.Rows[a.Topic] += a.Rows
	}
	return nil
}

// jobOutput routes a job's batches to one sink writer per topic.
type jobOutput struct {
	h     *Host
	job   Job
	input string
	log   *slog.Logger

	writers map[string]sink.Writer // only touched from the Run goroutine
	order   []string
}

var _ guest.Output = (*jobOutput)(nil)

func (o *jobOutput) Emit(ctx context.Context, topic string, rec arrow.RecordBatch) error {
	w, ok := o.writers[topic]
	if !ok {
		if err := bridge.ValidateTopic(topic); err != nil {
			return &guest.Error{Kind: guest.ErrSchema, ExitCode: -1, Message: err.Error()}
		}
		var err error
		w, err = sink.Open(ctx, o.target(topic), o.h.cfg.Sink)
		if err != nil {
			return guest.AsError(err, guest.ErrSink)
		}
		o.writers[topic] = w
		o.order = append(o.order, topic)
	}
	fault.Hit(fault.GuestRun)
	err := w.Write(ctx, rec)
	fault.Hit(fault.SinkWrite)
	return err
}

func (o *jobOutput) target(topic string) sink.Target {
	uri := "parquet://" + topic
	for _, s := range o.job.Sinks {
		if s.Topic == topic {
			uri = s.URI
			break
		}
	}
	p := o.job.Plugin
	prov := map[string]string{
		"casparian.product_version": Version,
		"casparian.job_id":          strconv.FormatInt(o.job.ID, 10),
		"casparian.file_version_id": strconv.FormatInt(o.job.FileVersionID, 10),
		"casparian.plugin":          p.Name,
		"casparian.plugin_version":  p.Version,
		"casparian.plugin_hash":     p.Hash,
		"casparian.guest":           string(p.Kind),
		"casparian.topic":           topic,
		"casparian.input_path":      o.input,
		"casparian.input_sha256":    o.job.InputHash,
	}
	return sink.Target{URI: uri, OutputDir: o.h.cfg.OutputDir, JobID: o.job.ID, FileVersionID: o.job.FileVersionID,
		Topic: topic, FileStem: o.job.FileStem, Provenance: prov}
}

func (o *jobOutput) Log(r guest.LogRecord) {
	attrs := make([]slog.Attr, 0, len(r.Attrs)+1)
	attrs = append(attrs, slog.String("stream", r.Stream))
	attrs = append(attrs, r.Attrs...)
	o.log.LogAttrs(context.Background(), r.Level, r.Message, attrs...)
}

// commitAll commits every topic; if one fails, the ones already committed
// are removed again so a failed job leaves no partial output.
func (o *jobOutput) commitAll(ctx context.Context) ([]sink.Artifact, error) {
	// Parquet commits (renames) can be undone, SQLite appends cannot: commit
	// Parquet first so a failing SQLite commit leaves nothing behind.
	topics := append([]string(nil), o.order...)
	sort.Slice(topics, func(i, j int) bool {
		si, sj := o.isSQL(topics[i]), o.isSQL(topics[j])
		if si != sj {
			return sj
		}
		return topics[i] < topics[j]
	})
	var arts []sink.Artifact
	for _, t := range topics {
		a, err := o.writers[t].Commit(ctx)
		delete(o.writers, t)
		if err != nil {
			for _, done := range arts {
				removeArtifact(done)
			}
			return nil, guest.AsError(fmt.Errorf("commit topic %q: %w", t, err), guest.ErrSink)
		}
		arts = append(arts, a)
	}
	return arts, nil
}

func (o *jobOutput) abortAll() {
	for t, w := range o.writers {
		if err := w.Abort(); err != nil {
			o.log.Warn("abort output", "topic", t, "error", err)
		}
		delete(o.writers, t)
	}
}

func (o *jobOutput) isSQL(topic string) bool {
	return strings.HasPrefix(o.target(topic).URI, "sqlite:")
}

// removeArtifact deletes a committed Parquet file.
func removeArtifact(a sink.Artifact) {
	if p, ok := strings.CutPrefix(a.URI, "parquet://"); ok {
		_ = os.Remove(p)
	}
}
