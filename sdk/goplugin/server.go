package goplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// Failure codes a plugin may report; the host maps them to its error kinds.
const (
	CodePlugin        = "PLUGIN_ERROR"
	CodeSchema        = "SCHEMA"
	CodeInput         = "INPUT"
	CodeResourceLimit = "RESOURCE_LIMIT"
)

// The process's own stdout and stderr, saved by Serve before go-plugin
// replaces them with its stdio relay; restored on the first call.
var (
	realStdout, realStderr *os.File
	restoreOnce            sync.Once
)

func restoreStdio() {
	restoreOnce.Do(func() {
		if realStdout != nil {
			os.Stdout = realStdout
		}
		if realStderr != nil {
			os.Stderr = realStderr
		}
	})
}

// server implements the Plugin service for one sdk.Plugin.
type server struct {
	pluginpb.UnimplementedPluginServer
	impl sdk.Plugin

	infoOnce sync.Once
	info     sdk.Info
	infoErr  error
}

func newServer(p sdk.Plugin) *server { return &server{impl: p} }

// pluginInfo calls Info once (recovering a panic) and keeps the answer: Emit
// checks every batch against it.
func (s *server) pluginInfo() (sdk.Info, error) {
	s.infoOnce.Do(func() {
		defer func() {
			if p := recover(); p != nil {
				s.infoErr = fmt.Errorf("panic in Info: %v\n%s", p, debug.Stack())
			}
		}()
		s.info = s.impl.Info()
	})
	return s.info, s.infoErr
}

func (s *server) Info(context.Context, *pluginpb.InfoRequest) (*pluginpb.InfoResponse, error) {
	restoreStdio()
	info, err := s.pluginInfo()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &pluginpb.InfoResponse{Name: info.Name, Version: info.Version, Description: info.Description, SdkVersion: SDKVersion}
	for _, t := range info.Topics {
		pt := &pluginpb.Topic{Name: t.Name}
		if t.Schema != nil {
			b, err := schemaIPC(t.Schema)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "topic %q: encode schema: %v", t.Name, err)
			}
			pt.Schema = b
		}
		resp.Topics = append(resp.Topics, pt)
	}
	return resp, nil
}

// schemaIPC encodes a schema as an IPC stream of one empty batch.
func schemaIPC(schema *arrow.Schema) ([]byte, error) {
	rec := array.NewRecordBatch(schema, emptyColumns(schema), 0)
	defer rec.Release()
	var buf bytesBuffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema))
	if err := w.Write(rec); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.b, nil
}

func emptyColumns(schema *arrow.Schema) []arrow.Array {
	cols := make([]arrow.Array, schema.NumFields())
	for i, f := range schema.Fields() {
		b := array.NewBuilder(memory.DefaultAllocator, f.Type)
		cols[i] = b.NewArray()
		b.Release()
	}
	return cols
}

type bytesBuffer struct{ b []byte }

func (b *bytesBuffer) Write(p []byte) (int, error) {
	b.b = append(b.b, p...)
	return len(p), nil
}

func (s *server) Process(req *pluginpb.ProcessRequest, stream pluginpb.Plugin_ProcessServer) error {
	restoreStdio()
	ctx := stream.Context()
	out := &output{ctx: ctx, stream: stream, chunk: clampChunk(int(req.GetChunkBytes())), minLevel: slog.Level(req.GetMinLogLevel()),
		syncLine: req.GetSyncLine()}
	out.logger = slog.New(&logHandler{out: out})
	defer out.finish()

	info, err := s.pluginInfo()
	if err != nil {
		return out.fail(&pluginpb.Failure{Code: CodePlugin, Message: err.Error(), Fatal: true})
	}
	out.info = info
	in := sdk.Input{Path: req.GetPath(), JobID: req.GetJobId(), FileID: req.GetFileId(), Config: map[string]any{}}
	if cfg := req.GetConfigJson(); len(cfg) > 0 {
		if err := json.Unmarshal(cfg, &in.Config); err != nil {
			return out.fail(&pluginpb.Failure{Code: CodePlugin, Message: fmt.Sprintf("decode the job configuration: %v", err)})
		}
		if in.Config == nil {
			in.Config = map[string]any{}
		}
	}

	var panicked *pluginpb.Failure
	func() {
		defer func() {
			if p := recover(); p != nil {
				panicked = &pluginpb.Failure{Code: CodePlugin, Message: fmt.Sprintf("panic: %v", p),
					Traceback: panicStack(debug.Stack()), Fatal: true}
			}
		}()
		err = s.impl.Process(ctx, in, out)
	}()
	// An Emit still running in a goroutine the plugin left behind completes
	// its batch; later ones fail, so Done counts every batch sent.
	out.emitMu.Lock()
	out.emitOver = true
	out.emitMu.Unlock()
	switch {
	case panicked != nil:
		return out.fail(panicked)
	case err != nil:
		return out.fail(&pluginpb.Failure{Code: failureCode(err, in.Path), Message: err.Error()})
	}
	out.mu.Lock()
	done := &pluginpb.Done{Batches: out.batches, Rows: out.rows}
	out.mu.Unlock()
	return out.final(&pluginpb.Event{Kind: &pluginpb.Event_Done{Done: done}})
}

// writeSync writes the host's sync line to the process's stdout and stderr
// (see ProcessRequest.sync_line): once the host has read it on both, it has
// every line written during the job.
func writeSync(line string) {
	if line == "" || strings.ContainsAny(line, "\r\n") || realStdout == nil || realStderr == nil {
		return
	}
	b := []byte(line + "\n")
	_, _ = realStdout.Write(b)
	_, _ = realStderr.Write(b)
}

// panicStack trims a debug.Stack taken in a deferred recover to the frames
// that matter: from the one that panicked down to the plugin's Process,
// without the runtime's panic frames above nor the SDK's and gRPC's below.
func panicStack(stack []byte) string {
	lines := strings.Split(strings.TrimRight(string(stack), "\n"), "\n")
	if len(lines) < 2 {
		return string(stack)
	}
	out := []string{lines[0]} // goroutine N [running]:
	i := 1
	for ; i+1 < len(lines); i += 2 { // function line, then its file line
		if strings.HasPrefix(lines[i], "panic(") {
			i += 2
			break
		}
	}
	if i >= len(lines) { // no panic frame: keep everything
		return string(stack)
	}
	for ; i+1 < len(lines); i += 2 {
		if strings.HasPrefix(lines[i], sdkPackage+".") {
			break
		}
		out = append(out, lines[i], lines[i+1])
	}
	return strings.Join(out, "\n")
}

// sdkPackage prefixes the function names of this package in stack traces.
const sdkPackage = "github.com/casparianflow/casparian/sdk/goplugin"

func failureCode(err error, input string) string {
	var se *schemaError
	if errors.As(err, &se) {
		return CodeSchema
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == input && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
		return CodeInput
	}
	return CodePlugin
}

func clampChunk(n int) int {
	switch {
	case n <= 0:
		return DefaultChunkBytes
	case n < MinChunkBytes:
		return MinChunkBytes
	case n > MaxChunkBytes:
		return MaxChunkBytes
	}
	return n
}

// schemaError marks an Emit refused by the plugin-side checks (sdk.CheckEmit).
type schemaError struct{ err error }

func (e *schemaError) Error() string { return e.err.Error() }
func (e *schemaError) Unwrap() error { return e.err }

// errJobOver is returned by Emit and dropped by the logger after the job ended.
var errJobOver = errors.New("emit: the job is over (Process returned)")

// output is the sdk.Output of one Process call.
type output struct {
	ctx      context.Context
	stream   pluginpb.Plugin_ProcessServer
	chunk    int
	minLevel slog.Level
	info     sdk.Info
	logger   *slog.Logger
	syncLine string

	emitMu   sync.Mutex // one batch at a time, so chunks are never interleaved
	buf      []byte     // chunk buffer, reused (see chunkWriter.flush)
	broken   error      // set when a batch was cut off after some of its chunks were sent
	emitOver bool       // Process returned: no more batches

	mu      sync.Mutex // guards the stream and the fields below
	over    bool
	batches int64
	rows    int64
}

var _ sdk.Output = (*output)(nil)

func (o *output) Logger() *slog.Logger { return o.logger }

// Emit checks the batch, serializes it as one Arrow IPC stream and sends it in
// chunks as it is written, so a batch of any size needs one chunk of memory.
// It is safe for concurrent use; batches are sent one at a time.
func (o *output) Emit(topic string, rec arrow.RecordBatch) error {
	if err := sdk.CheckEmit(o.info, topic, rec); err != nil {
		return &schemaError{err}
	}
	o.emitMu.Lock()
	defer o.emitMu.Unlock()
	if o.emitOver {
		return errJobOver
	}
	if err := o.ctx.Err(); err != nil {
		return fmt.Errorf("emit: the host stopped the job: %w", err)
	}
	if o.broken != nil {
		return o.broken
	}
	if o.buf == nil {
		o.buf = make([]byte, 0, o.chunk)
	}
	o.buf = o.buf[:0]
	cw := &chunkWriter{o: o, topic: topic}
	w := ipc.NewWriter(cw, ipc.WithSchema(rec.Schema()))
	err := w.Write(rec)
	if err == nil {
		err = w.Close()
	}
	if err == nil {
		err = cw.flush(true)
	}
	if err != nil {
		err = cw.wrap(err)
		if cw.sent {
			// Part of the batch is on the wire and the rest never will be:
			// the job cannot go on (the host fails it on the Failure event).
			o.broken = err
		}
		return err
	}
	o.mu.Lock()
	o.batches++
	o.rows += rec.NumRows()
	o.mu.Unlock()
	return nil
}

// send sends one event unless the job is over. gRPC forbids concurrent Sends
// on a stream, and Sends after the handler returned.
func (o *output) send(ev *pluginpb.Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.over {
		return errJobOver
	}
	return o.stream.Send(ev)
}

func (o *output) fail(f *pluginpb.Failure) error {
	return o.final(&pluginpb.Event{Kind: &pluginpb.Event_Failure{Failure: f}})
}

// final sends the last event, after the sync line.
func (o *output) final(ev *pluginpb.Event) error {
	writeSync(o.syncLine)
	return o.send(ev)
}

// finish marks the job over: later Emits fail, later log records go to stderr.
func (o *output) finish() {
	o.mu.Lock()
	o.over = true
	o.mu.Unlock()
}

// chunkWriter cuts the IPC stream of one batch into Chunk events.
type chunkWriter struct {
	o       *output
	topic   string
	sent    bool // a chunk of this batch went out
	sendErr error
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	if c.sendErr != nil {
		return 0, c.sendErr
	}
	o, n := c.o, len(p)
	for len(p) > 0 {
		k := min(o.chunk-len(o.buf), len(p))
		o.buf = append(o.buf, p[:k]...)
		p = p[k:]
		if len(o.buf) == o.chunk {
			if err := c.flush(false); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// flush sends the buffered bytes. The buffer is reused for the next chunk:
// gRPC marshals the message inside Send, and this server has no stats
// handler that could keep a reference to it.
func (c *chunkWriter) flush(last bool) error {
	o := c.o
	if len(o.buf) == 0 && !last {
		return nil
	}
	err := o.send(&pluginpb.Event{Kind: &pluginpb.Event_Chunk{Chunk: &pluginpb.Chunk{Topic: c.topic, Data: o.buf, Last: last}}})
	o.buf = o.buf[:0]
	c.sent = true
	if err != nil {
		c.sendErr = err
	}
	return err
}

func (c *chunkWriter) wrap(err error) error {
	if c.sendErr != nil || c.o.ctx.Err() != nil {
		if cerr := c.o.ctx.Err(); cerr != nil {
			return fmt.Errorf("emit: the host stopped the job: %w", cerr)
		}
		if errors.Is(c.sendErr, errJobOver) {
			return errJobOver
		}
		return fmt.Errorf("emit: send to the host: %w", c.sendErr)
	}
	return fmt.Errorf("emit to topic %q: serialize: %w", c.topic, err)
}
