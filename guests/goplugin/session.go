package goplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	sdkgp "github.com/casparianflow/casparian/sdk/goplugin"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// job runs one input on the process. reusable says whether the process may
// serve another job: only after a Done, or a non-fatal Failure, with the
// stream closed cleanly.
func (p *proc) job(ctx context.Context, in guest.Input, out guest.Output) (reusable bool, err error) {
	p.setSink(out)
	defer p.setSink(nil)
	cfg := in.Config
	if cfg == nil {
		cfg = map[string]any{}
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return true, &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err, Message: fmt.Sprintf("encode the job configuration as JSON: %v", err)}
	}
	syncLine := ""
	if !p.noSync {
		syncLine = p.beginSync()
		defer p.endSync()
	}
	// The call does not carry ctx's deadline: the host enforces it (and
	// kills the process), while a deadline in the plugin would race it with
	// an error of its own. The plugin's context is cancelled when ctx is.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopCancel := context.AfterFunc(ctx, cancel)
	defer stopCancel()
	stream, err := p.rpc.Process(sctx, &pluginpb.ProcessRequest{
		JobId: in.JobID, FileId: in.FileVersionID, Path: in.Path, ConfigJson: cfgJSON,
		ChunkBytes: int32(p.rt.cfg.ChunkBytes), MinLogLevel: int32(p.rt.cfg.LogLevel), SyncLine: syncLine,
	}, grpc.MaxCallRecvMsgSize(maxMessage))
	if err != nil {
		return false, p.callError(ctx, err, "when the job started")
	}
	s := &session{p: p, ctx: ctx, stream: stream, out: out}
	reusable, err = s.run()
	if s.ended && syncLine != "" && !p.waitSync(syncWait) {
		// A plugin that does not write the line (another SDK) would cost
		// every job the wait: stop asking this process for it.
		p.noSync = true
	}
	return reusable, err
}

// syncWait bounds the wait for the sync line after the last event.
const syncWait = time.Second

// session reads one Process stream.
type session struct {
	p       *proc
	ctx     context.Context
	stream  grpc.ServerStreamingClient[pluginpb.Event]
	out     guest.Output
	batches int64
	rows    int64
	ended   bool // a Done or Failure event came
}

func (s *session) run() (reusable bool, err error) {
	p := s.p
	for {
		ev, err := s.stream.Recv()
		if err != nil {
			return false, p.callError(s.ctx, err, "in mid-stream")
		}
		switch k := ev.GetKind().(type) {
		case *pluginpb.Event_Chunk:
			if err := s.batch(k.Chunk); err != nil {
				return false, err
			}
		case *pluginpb.Event_Log:
			s.out.Log(sdkRecord(k.Log))
		case *pluginpb.Event_Done:
			s.ended = true
			if d := k.Done; d.GetBatches() != s.batches || d.GetRows() != s.rows {
				return false, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
					Message: fmt.Sprintf("plugin %q reports %d batches, %d rows; the host received %d batches, %d rows",
						p.name, d.GetBatches(), d.GetRows(), s.batches, s.rows)}
			}
			return s.end(true, nil)
		case *pluginpb.Event_Failure:
			s.ended = true
			e := p.failure(k.Failure)
			return s.end(!k.Failure.GetFatal(), e)
		default:
			return false, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Message: fmt.Sprintf("plugin %q sent an unknown event", p.name)}
		}
	}
}

// end waits for the stream to close after its last event, so the plugin's
// handler has returned before the process serves another job.
func (s *session) end(reusable bool, result error) (bool, error) {
	ev, err := s.stream.Recv()
	if err == io.EOF {
		return reusable, result
	}
	if result != nil {
		return false, result
	}
	if err == nil {
		return false, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %q sent %T after the end of the job", s.p.name, ev.GetKind())}
	}
	return false, s.p.callError(s.ctx, err, "at the end of the job")
}

// failure converts a Failure event. A plugin may report only its own kinds
// of failure, never a host's (TIMEOUT, CANCELLED, CRASHED, SINK, ...).
func (p *proc) failure(f *pluginpb.Failure) *guest.Error {
	kind := guest.ErrPlugin
	switch f.GetCode() {
	case sdkgp.CodeSchema:
		kind = guest.ErrSchema
	case sdkgp.CodeInput:
		kind = guest.ErrInput
	case sdkgp.CodeResourceLimit:
		kind = guest.ErrResourceLimit
	}
	e := &guest.Error{Kind: kind, ExitCode: -1, Message: f.GetMessage(), Traceback: f.GetTraceback()}
	switch {
	case f.GetTraceback() != "":
		e.Hint = "the plugin panicked: the traceback points at the line"
	case kind == guest.ErrPlugin && p.sb != nil && strings.Contains(strings.ToLower(e.Message), "permission denied"):
		e.Hint = "if the path is outside the plugin's private directory: the sandbox lets plugins write only there " +
			"(their working directory and TMPDIR, removed when the process stops); emit results as batches instead, " +
			"or add the path to the goplugin guest's Sandbox.Writable"
	case kind == guest.ErrPlugin:
		e.Hint = "the plugin's Process returned this error"
	case kind == guest.ErrSchema:
		e.Hint = "emit only to the topics listed in Info().Topics, with their declared schemas"
	case kind == guest.ErrInput:
		e.Hint = "check that the input file exists and is readable"
	}
	return e
}

// batch decodes one batch while its chunks arrive and emits it.
func (s *session) batch(first *pluginpb.Chunk) error {
	p, cfg := s.p, s.p.rt.cfg
	topic := first.GetTopic()
	if err := bridge.ValidateTopic(topic); err != nil {
		return &guest.Error{Kind: guest.ErrSchema, ExitCode: -1, Message: fmt.Sprintf("plugin %q: %v", p.name, err)}
	}
	want, ok := p.topics[topic]
	if p.declared && !ok {
		names := make([]string, 0, len(p.topics))
		for n := range p.topics {
			names = append(names, n)
		}
		sort.Strings(names)
		return &guest.Error{Kind: guest.ErrSchema, ExitCode: -1,
			Message: fmt.Sprintf("plugin %q emitted to topic %q, which is not declared in its Info().Topics %v", p.name, topic, names)}
	}
	cr := &chunkReader{s: s, topic: topic, data: first.GetData(), last: first.GetLast(), n: int64(len(first.GetData()))}
	if cr.n > cfg.MaxBatchBytes {
		return cr.tooLarge()
	}
	var emitErr error
	_, err := bridge.ReadIPC(cr, cfg.MaxBatchBytes, cfg.Allocator, func(rec arrow.RecordBatch) error {
		if s.ctx.Err() != nil {
			return ctxError(s.ctx, "in mid-stream")
		}
		if want != nil && !want.Equal(rec.Schema()) {
			return &guest.Error{Kind: guest.ErrSchema, ExitCode: -1,
				Message: fmt.Sprintf("plugin %q: a batch of topic %q has schema %s, the declared schema is %s", p.name, topic, rec.Schema(), want)}
		}
		if err := s.out.Emit(s.ctx, topic, rec); err != nil {
			emitErr = err
			return err
		}
		s.batches++
		s.rows += rec.NumRows()
		return nil
	})
	switch {
	case emitErr != nil:
		return guest.AsError(emitErr, guest.ErrSink)
	case cr.err != nil:
		return cr.err
	case s.ctx.Err() != nil:
		return ctxError(s.ctx, "in mid-stream")
	case err != nil:
		var ge *guest.Error
		if errors.As(err, &ge) {
			return ge
		}
		if msg := err.Error(); strings.Contains(msg, "message body of ") && strings.Contains(msg, fmt.Sprintf(" bytes (limit %d)", cfg.MaxBatchBytes)) {
			// The IPC guard refused a record batch whose body declares more
			// than the limit (before any of it was read).
			return cr.tooLarge()
		}
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q: topic %q: %v", p.name, topic, err)}
	}
	// The IPC stream ended: the batch must end with it.
	for len(cr.data) == 0 && !cr.last {
		if err := cr.fill(); err != nil {
			return err
		}
	}
	if len(cr.data) > 0 {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %q: topic %q: %d bytes after the end of the Arrow IPC stream", p.name, topic, len(cr.data))}
	}
	return nil
}

// chunkReader reads the IPC stream of one batch from its Chunk events,
// forwarding the Log events found between them.
type chunkReader struct {
	s     *session
	topic string
	data  []byte
	last  bool
	n     int64 // bytes received for the batch
	err   error // why reading stopped, as the job's error
}

func (c *chunkReader) Read(b []byte) (int, error) {
	for len(c.data) == 0 {
		if c.last {
			return 0, io.EOF
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(b, c.data)
	c.data = c.data[n:]
	return n, nil
}

// fill receives the next event of the batch.
func (c *chunkReader) fill() error {
	if c.err != nil {
		return c.err
	}
	p := c.s.p
	ev, err := c.s.stream.Recv()
	if err != nil {
		c.err = p.callError(c.s.ctx, err, fmt.Sprintf("in the middle of a batch of topic %q", c.topic))
		return c.err
	}
	switch k := ev.GetKind().(type) {
	case *pluginpb.Event_Chunk:
		if k.Chunk.GetTopic() != c.topic {
			c.err = &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
				Message: fmt.Sprintf("plugin %q sent a chunk of topic %q in the middle of a batch of topic %q", p.name, k.Chunk.GetTopic(), c.topic)}
			return c.err
		}
		c.data, c.last = k.Chunk.GetData(), k.Chunk.GetLast()
		c.n += int64(len(c.data))
		if c.n > p.rt.cfg.MaxBatchBytes {
			c.err = c.tooLarge()
		}
	case *pluginpb.Event_Log:
		c.s.out.Log(sdkRecord(k.Log))
	case *pluginpb.Event_Failure:
		c.s.ended = true
		c.err = p.failure(k.Failure) // the plugin gave up in the middle of the batch
	default:
		c.err = &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %q ended the job in the middle of a batch of topic %q", p.name, c.topic)}
	}
	return c.err
}

func (c *chunkReader) tooLarge() *guest.Error {
	return &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
		Message: fmt.Sprintf("plugin %q: a batch of topic %q is larger than %d bytes", c.s.p.name, c.topic, c.s.p.rt.cfg.MaxBatchBytes),
		Hint:    "emit smaller batches, or raise MaxBatchBytes"}
}

// callError explains a failed call or stream: the host's cancellation, the
// process's death, or a broken connection.
func (p *proc) callError(ctx context.Context, err error, during string) *guest.Error {
	if p.closing.Load() {
		return guest.Errorf(guest.ErrCancelled, "goplugin guest closed while plugin %q was running (%s)", p.name, during)
	}
	if ctx.Err() != nil {
		return ctxError(ctx, during)
	}
	if p.run.isStarted() && p.run.waitExit(2*time.Second) {
		return p.exitError(fmt.Sprintf("plugin process died %s", during))
	}
	if err == io.EOF {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %q closed the stream without Done or Failure %s", p.name, during)}
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.ResourceExhausted:
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q sent a message over the %d-byte limit %s: %s", p.name, maxMessage, during, st.Message())}
	case codes.Unimplemented:
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %q does not implement the call: %s", p.name, st.Message()),
			Hint:    "rebuild the plugin against this version of the Casparian SDK"}
	}
	return p.withStderr(&guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
		Message: fmt.Sprintf("plugin %q: connection lost %s: %s", p.name, during, st.Message())})
}
