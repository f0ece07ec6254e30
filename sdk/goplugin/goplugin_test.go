package goplugin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/goplugin"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// funcPlugin is an sdk.Plugin made of a function.
type funcPlugin struct {
	info    sdk.Info
	process func(ctx context.Context, in sdk.Input, out sdk.Output) error
}

func (p funcPlugin) Info() sdk.Info { return p.info }
func (p funcPlugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	return p.process(ctx, in, out)
}

// serve serves p in-process over an in-memory connection and returns a
// client with gRPC's default limits (4 MiB per received message).
func serve(t *testing.T, p sdk.Plugin) pluginpb.PluginClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	if err := (&goplugin.GRPCPlugin{Impl: p}).GRPCServer(nil, s); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return lis.Dial() }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	c, err := (&goplugin.GRPCPlugin{}).GRPCClient(context.Background(), nil, conn)
	if err != nil {
		t.Fatal(err)
	}
	return c.(pluginpb.PluginClient)
}

// job is what one Process call sent.
type job struct {
	chunks  []*pluginpb.Chunk
	logs    []*pluginpb.Log
	done    *pluginpb.Done
	failure *pluginpb.Failure
	order   []string // "chunk:<topic>", "log", "done", "failure"
}

func process(t *testing.T, ctx context.Context, c pluginpb.PluginClient, req *pluginpb.ProcessRequest) (*job, error) {
	t.Helper()
	stream, err := c.Process(ctx, req)
	if err != nil {
		return nil, err
	}
	j := &job{}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return j, nil
		}
		if err != nil {
			return j, err
		}
		switch k := ev.GetKind().(type) {
		case *pluginpb.Event_Chunk:
			j.chunks = append(j.chunks, k.Chunk)
			j.order = append(j.order, "chunk:"+k.Chunk.GetTopic())
		case *pluginpb.Event_Log:
			j.logs = append(j.logs, k.Log)
			j.order = append(j.order, "log")
		case *pluginpb.Event_Done:
			j.done = k.Done
			j.order = append(j.order, "done")
		case *pluginpb.Event_Failure:
			j.failure = k.Failure
			j.order = append(j.order, "failure")
		}
	}
}

// batches decodes the chunks of one topic, batch by batch.
func (j *job) batches(t *testing.T, topic string) []arrow.RecordBatch {
	t.Helper()
	var out []arrow.RecordBatch
	var buf bytes.Buffer
	for _, c := range j.chunks {
		if c.GetTopic() != topic {
			continue
		}
		buf.Write(c.GetData())
		if !c.GetLast() {
			continue
		}
		r, err := ipc.NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			rec := r.RecordBatch()
			rec.Retain()
			out = append(out, rec)
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		r.Release()
		buf.Reset()
	}
	if buf.Len() != 0 {
		t.Fatalf("topic %q: %d bytes without a last chunk", topic, buf.Len())
	}
	t.Cleanup(func() {
		for _, r := range out {
			r.Release()
		}
	})
	return out
}

var ints = arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)

func intBatch(start, n int) arrow.RecordBatch {
	b := array.NewInt64Builder(memory.DefaultAllocator)
	defer b.Release()
	for i := range n {
		b.Append(int64(start + i))
	}
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(ints, []arrow.Array{col}, int64(n))
}

func emitInts(out sdk.Output, topic string, start, n int) error {
	rec := intBatch(start, n)
	defer rec.Release()
	return out.Emit(topic, rec)
}

// A batch far over gRPC's 4 MiB message cap arrives in chunks of the
// requested size (clamped), the last one marked, and decodes to the same rows.
func TestEmitChunks(t *testing.T) {
	const rows = 1_500_000 // 12 MB of int64
	c := serve(t, funcPlugin{process: func(_ context.Context, _ sdk.Input, out sdk.Output) error {
		return emitInts(out, "ints", 0, rows)
	}})
	for _, tc := range []struct {
		ask, want int
	}{
		{0, goplugin.DefaultChunkBytes},
		{256 << 10, 256 << 10},
		{1, goplugin.MinChunkBytes},
		{64 << 20, goplugin.MaxChunkBytes},
	} {
		t.Run(fmt.Sprint(tc.ask), func(t *testing.T) {
			j, err := process(t, context.Background(), c, &pluginpb.ProcessRequest{ChunkBytes: int32(tc.ask)})
			if err != nil {
				t.Fatal(err)
			}
			if j.done == nil || j.done.GetBatches() != 1 || j.done.GetRows() != rows {
				t.Fatalf("done %v, failure %v", j.done, j.failure)
			}
			for i, ch := range j.chunks {
				last := i == len(j.chunks)-1
				if len(ch.GetData()) > tc.want || (!last && len(ch.GetData()) != tc.want) || ch.GetLast() != last {
					t.Fatalf("chunk %d of %d: %d bytes, last %v (chunk size %d)", i, len(j.chunks), len(ch.GetData()), ch.GetLast(), tc.want)
				}
			}
			recs := j.batches(t, "ints")
			if len(recs) != 1 || recs[0].NumRows() != rows {
				t.Fatalf("decoded %d batches", len(recs))
			}
			col := recs[0].Column(0).(*array.Int64)
			if col.Value(0) != 0 || col.Value(rows-1) != rows-1 {
				t.Fatalf("values %d..%d", col.Value(0), col.Value(rows-1))
			}
		})
	}
}

// Emit and the logger may be used from many goroutines: the chunks of one
// batch stay together, log records come between batches or chunks.
func TestConcurrentEmitAndLog(t *testing.T) {
	const workers, per = 4, 25
	c := serve(t, funcPlugin{process: func(ctx context.Context, _ sdk.Input, out sdk.Output) error {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					out.Logger().Info("batch", "worker", w, "i", i)
					if err := emitInts(out, fmt.Sprintf("w%d", w), i*5000, 5000); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	}})
	j, err := process(t, context.Background(), c, &pluginpb.ProcessRequest{ChunkBytes: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if j.done.GetBatches() != workers*per || len(j.logs) != workers*per {
		t.Fatalf("done %v, %d logs", j.done, len(j.logs))
	}
	// Chunks of a batch are contiguous: between a batch's first and last
	// chunk only log records may come.
	open := ""
	for _, ch := range j.chunks {
		if open != "" && ch.GetTopic() != open {
			t.Fatalf("chunk of %s inside a batch of %s", ch.GetTopic(), open)
		}
		open = ch.GetTopic()
		if ch.GetLast() {
			open = ""
		}
	}
	for w := range workers {
		recs := j.batches(t, fmt.Sprintf("w%d", w))
		if len(recs) != per {
			t.Fatalf("worker %d: %d batches", w, len(recs))
		}
	}
}

// The SDK's logger sends levels, messages and flattened attributes, and
// drops records under the requested level at the source.
func TestLogger(t *testing.T) {
	c := serve(t, funcPlugin{process: func(_ context.Context, _ sdk.Input, out sdk.Output) error {
		l := out.Logger()
		l.Debug("dropped at info")
		l.Info("hello", "n", 3, "t", time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC))
		l.With("a", 1).WithGroup("g").Warn("grouped", "b", 2, slog.Group("h", "c", 3))
		l.Error(strings.Repeat("x", 100<<10))
		return nil
	}})
	j, err := process(t, context.Background(), c, &pluginpb.ProcessRequest{MinLogLevel: int32(slog.LevelInfo)})
	if err != nil {
		t.Fatal(err)
	}
	if len(j.logs) != 3 {
		t.Fatalf("%d records: %v", len(j.logs), j.logs)
	}
	attrs := func(l *pluginpb.Log) string {
		var b []string
		for _, a := range l.GetAttrs() {
			b = append(b, a.GetKey()+"="+a.GetValue())
		}
		return strings.Join(b, " ")
	}
	if l := j.logs[0]; l.GetLevel() != int32(slog.LevelInfo) || l.GetMessage() != "hello" || attrs(l) != "n=3 t=2024-05-06T07:08:09Z" {
		t.Errorf("info record: %v", l)
	}
	if l := j.logs[1]; l.GetLevel() != int32(slog.LevelWarn) || attrs(l) != "a=1 g.b=2 g.h.c=3" {
		t.Errorf("warn record: %v (%s)", l, attrs(l))
	}
	if l := j.logs[2]; l.GetLevel() != int32(slog.LevelError) || len(l.GetMessage()) > 65<<10 {
		t.Errorf("error record: level %d, %d bytes", l.GetLevel(), len(l.GetMessage()))
	}
}

// A panic in Process is a fatal PLUGIN_ERROR whose traceback starts at the
// panicking line; the failure codes follow the error.
func TestFailures(t *testing.T) {
	in := "/nonexistent/input.csv"
	cases := []struct {
		name    string
		process func(context.Context, sdk.Input, sdk.Output) error
		code    string
		fatal   bool
		message string
	}{
		{"panic", func(context.Context, sdk.Input, sdk.Output) error { panicHere(); return nil }, goplugin.CodePlugin, true, "panic: kaboom"},
		{"error", func(context.Context, sdk.Input, sdk.Output) error { return errors.New("bad") }, goplugin.CodePlugin, false, "bad"},
		{"input", func(_ context.Context, in sdk.Input, _ sdk.Output) error {
			_, err := os.Open(in.Path)
			return fmt.Errorf("read: %w", err)
		}, goplugin.CodeInput, false, "no such file"},
		{"other file", func(context.Context, sdk.Input, sdk.Output) error {
			_, err := os.Open("/nonexistent/other")
			return err
		}, goplugin.CodePlugin, false, "no such file"},
		{"schema", func(_ context.Context, _ sdk.Input, out sdk.Output) error { return emitInts(out, "nope", 0, 1) }, goplugin.CodeSchema, false, `topic "nope" is not declared`},
		{"bad topic", func(_ context.Context, _ sdk.Input, out sdk.Output) error { return emitInts(out, "../x", 0, 1) }, goplugin.CodeSchema, false, "topic name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, funcPlugin{info: sdk.Info{Topics: []sdk.Topic{{Name: "ints", Schema: ints}}}, process: tc.process})
			j, err := process(t, context.Background(), c, &pluginpb.ProcessRequest{Path: in})
			if err != nil {
				t.Fatal(err)
			}
			f := j.failure
			if f == nil || f.GetCode() != tc.code || f.GetFatal() != tc.fatal || !strings.Contains(f.GetMessage(), tc.message) {
				t.Fatalf("failure %v, want %s %q fatal=%v", f, tc.code, tc.message, tc.fatal)
			}
			if tc.name == "panic" {
				tb := f.GetTraceback()
				first := strings.SplitN(tb, "\n", 3)
				if len(first) < 2 || !strings.Contains(first[1], "panicHere") || strings.Contains(tb, "sdk/goplugin.(*server)") {
					t.Fatalf("traceback does not start at the panicking function or keeps the SDK's frames:\n%s", tb)
				}
			}
		})
	}
}

func panicHere() { panic("kaboom") }

// Cancelling the call (the host refused a batch, or cancelled the job)
// cancels the plugin's context and fails its next Emit.
func TestCancelStopsEmit(t *testing.T) {
	emitErr := make(chan error, 1)
	c := serve(t, funcPlugin{process: func(ctx context.Context, _ sdk.Input, out sdk.Output) error {
		for i := 0; ; i++ {
			if err := emitInts(out, "ints", i, 10); err != nil {
				emitErr <- err
				return err
			}
			if i == 1000 {
				return errors.New("never cancelled")
			}
			time.Sleep(time.Millisecond)
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Process(ctx, &pluginpb.ProcessRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-emitErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Emit after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Emit did not fail after the call was cancelled")
	}
}

// Info carries the topics and their schemas as IPC bytes.
func TestInfo(t *testing.T) {
	c := serve(t, funcPlugin{info: sdk.Info{Name: "p", Version: "1", Topics: []sdk.Topic{{Name: "ints", Schema: ints}, {Name: "any"}}}})
	info, err := c.Info(context.Background(), &pluginpb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetName() != "p" || len(info.GetTopics()) != 2 || len(info.GetTopics()[1].GetSchema()) != 0 {
		t.Fatalf("info %v", info)
	}
	r, err := ipc.NewReader(bytes.NewReader(info.GetTopics()[0].GetSchema()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	if !r.Schema().Equal(ints) {
		t.Fatalf("schema %v", r.Schema())
	}
}

// Plugin-side packages never import host code, wazero or ZeroMQ.
func TestPluginSideDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/casparianflow/casparian/sdk/goplugin", "github.com/casparianflow/casparian/sdk/serve").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{
			"github.com/casparianflow/casparian/host", "github.com/casparianflow/casparian/guests",
			"github.com/casparianflow/casparian/sentinel", "github.com/casparianflow/casparian/worker",
			"github.com/casparianflow/casparian/cmd", "github.com/tetratelabs/wazero", "github.com/go-zeromq",
		} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("plugin-side packages depend on %s", dep)
			}
		}
	}
}

// A goroutine the plugin leaves behind cannot emit after Process returned:
// Done counts exactly the batches sent.
func TestEmitAfterReturn(t *testing.T) {
	late := make(chan error, 1)
	release := make(chan struct{})
	c := serve(t, funcPlugin{process: func(_ context.Context, _ sdk.Input, out sdk.Output) error {
		go func() {
			<-release
			late <- emitInts(out, "ints", 0, 1)
			out.Logger().Info("too late") // goes to stderr instead
		}()
		return emitInts(out, "ints", 0, 10)
	}})
	j, err := process(t, context.Background(), c, &pluginpb.ProcessRequest{})
	close(release)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-late; err == nil || !strings.Contains(err.Error(), "the job is over") {
		t.Fatalf("late Emit: %v", err)
	}
	if j.done.GetBatches() != 1 || len(j.batches(t, "ints")) != 1 {
		t.Fatalf("done %v", j.done)
	}
}
