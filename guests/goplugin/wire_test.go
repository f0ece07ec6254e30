package goplugin

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	"github.com/casparianflow/casparian/internal/testenv"
	sdkgp "github.com/casparianflow/casparian/sdk/goplugin"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// fakePlugin is a hostile or broken plugin: it sends whatever events send
// sends, bypassing the SDK.
type fakePlugin struct {
	pluginpb.UnimplementedPluginServer
	send func(stream pluginpb.Plugin_ProcessServer) error
}

func (f *fakePlugin) Process(_ *pluginpb.ProcessRequest, stream pluginpb.Plugin_ProcessServer) error {
	return f.send(stream)
}

// fakeProc is a proc without a process, talking to a fakePlugin in memory.
func fakeProc(t *testing.T, rt *Runtime, topics map[string]*arrow.Schema, send func(pluginpb.Plugin_ProcessServer) error) *proc {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	pluginpb.RegisterPluginServer(s, &fakePlugin{send: send})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///fake",
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
	p := &proc{rt: rt, name: "fake", tail: guestlog.NewTail(5), rpc: pluginpb.NewPluginClient(conn),
		topics: topics, declared: len(topics) > 0, gone: make(chan struct{})}
	p.run = newRunner(p, "", nil, rt.spawn)
	return p
}

var intSchema = arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)

func intRecord(n int) arrow.RecordBatch {
	b := array.NewInt64Builder(memory.DefaultAllocator)
	defer b.Release()
	for i := range n {
		b.Append(int64(i))
	}
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(intSchema, []arrow.Array{col}, int64(n))
}

func ipcBatch(t *testing.T, n int) []byte {
	t.Helper()
	rec := intRecord(n)
	defer rec.Release()
	data, err := bridge.EncodeIPC(intSchema, rec)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func chunk(topic string, data []byte, last bool) *pluginpb.Event {
	return &pluginpb.Event{Kind: &pluginpb.Event_Chunk{Chunk: &pluginpb.Chunk{Topic: topic, Data: data, Last: last}}}
}

func done(batches, rows int64) *pluginpb.Event {
	return &pluginpb.Event{Kind: &pluginpb.Event_Done{Done: &pluginpb.Done{Batches: batches, Rows: rows}}}
}

func sendAll(evs ...*pluginpb.Event) func(pluginpb.Plugin_ProcessServer) error {
	return func(s pluginpb.Plugin_ProcessServer) error {
		for _, ev := range evs {
			if err := s.Send(ev); err != nil {
				return err
			}
		}
		return nil
	}
}

// The host treats a plugin's stream as untrusted: every violation fails the
// job with a clear kind, and the process is not reused.
func TestHostileStreams(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rt, err := New(Config{Allocator: mem, MaxBatchBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	good := ipcBatch(t, 100)
	declared := map[string]*arrow.Schema{"ints": intSchema, "any": nil}
	otherSchema := arrow.NewSchema([]arrow.Field{{Name: "w", Type: arrow.PrimitiveTypes.Int64}}, nil)

	cases := []struct {
		name     string
		topics   map[string]*arrow.Schema
		send     func(pluginpb.Plugin_ProcessServer) error
		kind     error // nil: success
		reusable bool
		message  string
	}{
		{"good batch in 3 chunks", declared, sendAll(chunk("ints", good[:10], false), chunk("ints", good[10:200], false),
			chunk("ints", good[200:], true), done(1, 100)), nil, true, ""},
		{"junk bytes", nil, sendAll(chunk("t", []byte("definitely not arrow"), true), done(1, 1)), guest.ErrProtocol, false, "invalid Arrow IPC"},
		{"truncated stream", nil, sendAll(chunk("t", good[:len(good)-20], true), done(1, 100)), guest.ErrProtocol, false, "topic"},
		{"bytes after the stream", nil, sendAll(chunk("t", append(append([]byte{}, good...), 1, 2, 3), true), done(1, 100)), guest.ErrProtocol, false, "after the end of the Arrow IPC stream"},
		{"topic switch inside a batch", nil, sendAll(chunk("a", good[:10], false), chunk("b", good[10:], true)), guest.ErrProtocol, false, "in the middle of a batch"},
		{"Done inside a batch", nil, sendAll(chunk("a", good[:10], false), done(0, 0)), guest.ErrProtocol, false, "ended the job in the middle of a batch"},
		{"stream over MaxBatchBytes", nil, func(s pluginpb.Plugin_ProcessServer) error {
			// 20 record batches of 80 KB in one IPC stream: each is under the
			// limit, together they are not.
			var recs []arrow.RecordBatch
			for range 20 {
				recs = append(recs, intRecord(10000))
			}
			data, err := bridge.EncodeIPC(intSchema, recs...)
			for _, r := range recs {
				r.Release()
			}
			if err != nil {
				return err
			}
			for len(data) > 0 {
				n := min(len(data), 64<<10)
				if err := s.Send(chunk("t", data[:n], n == len(data))); err != nil {
					return err
				}
				data = data[n:]
			}
			return nil
		}, guest.ErrResourceLimit, false, "larger than 1048576 bytes"},
		{"batch body over MaxBatchBytes", nil, sendAll(chunk("t", ipcBatch(t, 200000), true)), guest.ErrResourceLimit, false, "larger than 1048576 bytes"},
		{"message over 4 MiB", nil, sendAll(chunk("t", make([]byte, 5<<20), false)), guest.ErrProtocol, false, "over the 4194304-byte limit"},
		{"invalid topic", nil, sendAll(chunk("../etc", good, true), done(1, 100)), guest.ErrSchema, false, "topic"},
		{"undeclared topic", declared, sendAll(chunk("secret", good, true), done(1, 100)), guest.ErrSchema, false, `"secret", which is not declared`},
		{"wrong schema", map[string]*arrow.Schema{"ints": otherSchema}, sendAll(chunk("ints", good, true), done(1, 100)), guest.ErrSchema, false, "the declared schema"},
		{"Done with wrong counts", nil, sendAll(chunk("t", good, true), done(2, 100)), guest.ErrProtocol, false, "reports 2 batches"},
		{"no Done", nil, sendAll(chunk("t", good, true)), guest.ErrProtocol, false, "without Done or Failure"},
		{"event after Done", nil, sendAll(done(0, 0), done(0, 0)), guest.ErrProtocol, false, "after the end of the job"},
		{"claims a host error kind", nil, sendAll(&pluginpb.Event{Kind: &pluginpb.Event_Failure{Failure: &pluginpb.Failure{Code: "TIMEOUT", Message: "not mine to say"}}}),
			guest.ErrPlugin, true, "not mine to say"},
		{"reports an input error", nil, sendAll(&pluginpb.Event{Kind: &pluginpb.Event_Failure{Failure: &pluginpb.Failure{Code: sdkgp.CodeInput, Message: "missing"}}}),
			guest.ErrInput, true, "missing"},
		{"fatal failure", nil, sendAll(&pluginpb.Event{Kind: &pluginpb.Event_Failure{Failure: &pluginpb.Failure{Code: sdkgp.CodePlugin, Message: "panic: x", Fatal: true}}}),
			guest.ErrPlugin, false, "panic: x"},
		{"failure inside a batch", nil, sendAll(chunk("t", good[:10], false), &pluginpb.Event{Kind: &pluginpb.Event_Failure{Failure: &pluginpb.Failure{Code: sdkgp.CodePlugin, Message: "gave up"}}}),
			guest.ErrPlugin, false, "gave up"},
		{"handler error", nil, func(pluginpb.Plugin_ProcessServer) error { return errors.New("boom") }, guest.ErrProtocol, false, "boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := fakeProc(t, rt, tc.topics, tc.send)
			rec := &testenv.Recorder{}
			defer rec.Release()
			reusable, err := p.job(context.Background(), guest.Input{JobID: 1, Path: "/dev/null"}, rec)
			if tc.kind == nil {
				if err != nil {
					t.Fatal(err)
				}
				if rec.Rows("ints") != 100 {
					t.Fatalf("rows %d", rec.Rows("ints"))
				}
			} else {
				if !errors.Is(err, tc.kind) {
					t.Fatalf("error %v, want kind %v", err, tc.kind)
				}
				if !strings.Contains(err.Error(), tc.message) {
					t.Fatalf("error %q does not say %q", err, tc.message)
				}
			}
			if reusable != tc.reusable {
				t.Fatalf("reusable %v, want %v (error %v)", reusable, tc.reusable, err)
			}
		})
	}
}
