//go:build wasip1

package wasm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/casparianflow/casparian/sdk"
)

// SDKName is reported to the host in casparian_info.
const SDKName = "casparian-go/" + "1"

// The module is single-threaded and the host never calls two exports at
// once, so this state needs no locks.
var (
	registered sdk.Plugin
	mainRan    bool
	// allocs keeps the buffers handed out by casparian_alloc alive (the
	// garbage collector cannot see the host's references) until casparian_free.
	allocs = map[uintptr][]byte{}
)

// Register makes p the plugin this module serves. Call it from an init
// function (or a package-level variable initializer) of package main, or let
// [Main] do it. A later call replaces the plugin.
func Register(p sdk.Plugin) {
	if p == nil {
		panic("casparian sdk/wasm: Register(nil)")
	}
	registered = p
}

// Main registers p and returns. It is what serve.Main does in a GOOS=wasip1
// build: the module is a reactor, so its main function runs only when the
// host first asks for the plugin (see the package documentation), and Main
// must not block.
func Main(p sdk.Plugin) { Register(p) }

// mainMain is package main's main function. A reactor module
// (-buildmode=c-shared) never runs it by itself: the runtime's _initialize
// runs the package initializers only.
//
//go:linkname mainMain main.main
func mainMain()

// plugin returns the registered plugin, running main.main once first when
// no init function registered one.
func plugin() (p sdk.Plugin, err error) {
	if registered == nil && !mainRan {
		mainRan = true
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("main panicked before registering the plugin: %v", r)
			}
		}()
		mainMain()
	}
	if registered == nil {
		return nil, errors.New("no plugin registered: call serve.Main(p) as the only statement of main, or wasm.Register(p) from an init function")
	}
	return registered, nil
}

//go:wasmimport casparian emit
func hostEmit(topic string, data unsafe.Pointer, size uint32) uint32

//go:wasmimport casparian log
func hostLog(level int32, msg string)

//go:wasmimport casparian set_info
func hostSetInfo(doc string)

//go:wasmimport casparian set_error
func hostSetError(doc string)

//go:wasmexport casparian_abi_version
func abiVersion() int32 { return ABIVersion }

//go:wasmexport casparian_alloc
func alloc(size uint32) unsafe.Pointer {
	if size == 0 {
		size = 1
	}
	b := make([]byte, size)
	p := unsafe.Pointer(unsafe.SliceData(b))
	allocs[uintptr(p)] = b
	return p
}

//go:wasmexport casparian_free
func free(p unsafe.Pointer, _ uint32) {
	delete(allocs, uintptr(p))
}

//go:wasmexport casparian_info
func info() (status int32) {
	defer recoverTo(&status)
	p, err := plugin()
	if err != nil {
		reportError(Error{Kind: "PLUGIN_ERROR", Message: err.Error()})
		return StatusFailed
	}
	i := p.Info()
	doc := Info{Name: i.Name, Version: i.Version, Description: i.Description, SDK: SDKName}
	for _, t := range i.Topics {
		doc.Topics = append(doc.Topics, Topic{Name: t.Name})
	}
	b, err := json.Marshal(doc)
	if err != nil {
		reportError(Error{Kind: "PLUGIN_ERROR", Message: "encode plugin info: " + err.Error()})
		return StatusFailed
	}
	hostSetInfo(string(b))
	return StatusOK
}

//go:wasmexport casparian_process
func process(ptr unsafe.Pointer, size uint32) (status int32) {
	defer recoverTo(&status)
	var in Input
	if err := json.Unmarshal(unsafe.Slice((*byte)(ptr), size), &in); err != nil {
		reportError(Error{Kind: "PLUGIN_ERROR", Message: "decode the host's input document: " + err.Error()})
		return StatusFailed
	}
	p, err := plugin()
	if err != nil {
		reportError(Error{Kind: "PLUGIN_ERROR", Message: err.Error()})
		return StatusFailed
	}
	if in.Config == nil {
		in.Config = map[string]any{}
	}
	out := &output{info: p.Info(), max: in.MaxBatchBytes}
	out.log = slog.New(&logHandler{level: slog.LevelDebug})
	err = p.Process(context.Background(), sdk.Input{Path: in.Path, JobID: in.JobID, FileID: in.FileID, Config: in.Config}, out)
	if err != nil {
		reportError(classify(err, in.Path, out.refused))
		return StatusFailed
	}
	return StatusOK
}

// recoverTo turns a panic of the plugin into a reported error.
func recoverTo(status *int32) {
	r := recover()
	if r == nil {
		return
	}
	reportError(Error{Kind: "PLUGIN_ERROR", Type: "panic", Message: fmt.Sprintf("panic: %v", r), Traceback: string(debug.Stack())})
	*status = StatusFailed
}

// classify maps a plugin's error to an ABI error document.
func classify(err error, inputPath string, refused error) Error {
	e := Error{Kind: "PLUGIN_ERROR", Message: err.Error()}
	var pe *fs.PathError
	switch {
	case refused != nil && errors.Is(err, refused):
		e.Kind = "SCHEMA"
	case errors.As(err, &pe) && pe.Path == inputPath:
		e.Kind = "INPUT"
	}
	return e
}

func reportError(e Error) {
	b, err := json.Marshal(e)
	if err != nil {
		b, _ = json.Marshal(Error{Kind: "PLUGIN_ERROR", Message: strings.ToValidUTF8(e.Message, "\uFFFD")})
	}
	hostSetError(string(b))
}

// output is the sdk.Output of one casparian_process call.
type output struct {
	info    sdk.Info
	max     int64
	log     *slog.Logger
	buf     bytes.Buffer
	refused error // the last error CheckEmit returned
}

func (o *output) Logger() *slog.Logger { return o.log }

func (o *output) Emit(topic string, rec arrow.RecordBatch) error {
	if err := sdk.CheckEmit(o.info, topic, rec); err != nil {
		o.refused = err
		return err
	}
	return o.emit(topic, rec)
}

// emit serializes rec as one Arrow IPC stream and hands it to the host,
// halving it by rows while it is larger than the host accepts.
func (o *output) emit(topic string, rec arrow.RecordBatch) error {
	o.buf.Reset()
	w := ipc.NewWriter(&o.buf, ipc.WithSchema(rec.Schema()))
	if err := w.Write(rec); err != nil {
		return fmt.Errorf("emit to topic %q: encode Arrow IPC: %w", topic, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("emit to topic %q: encode Arrow IPC: %w", topic, err)
	}
	if o.max > 0 && int64(o.buf.Len()) > o.max {
		n := rec.NumRows()
		if n < 2 {
			return fmt.Errorf("emit to topic %q: one row takes %d bytes of Arrow IPC, more than the host's limit of %d per batch", topic, o.buf.Len(), o.max)
		}
		for _, r := range [][2]int64{{0, n / 2}, {n / 2, n}} {
			part := rec.NewSlice(r[0], r[1])
			err := o.emit(topic, part)
			part.Release()
			if err != nil {
				return err
			}
		}
		return nil
	}
	b := o.buf.Bytes()
	status := hostEmit(topic, unsafe.Pointer(unsafe.SliceData(b)), uint32(len(b)))
	runtime.KeepAlive(b)
	if status != StatusOK {
		return fmt.Errorf("emit to topic %q: the host refused the batch (status %d)", topic, status)
	}
	return nil
}

// logHandler sends log records to the host's log import.
type logHandler struct {
	level  slog.Level
	attrs  string // preformatted " k=v" pairs
	prefix string // group prefix, "g." for WithGroup("g")
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.prefix, a)
		return true
	})
	hostLog(int32(r.Level), b.String())
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		appendAttr(&b, h.prefix, a)
	}
	c := *h
	c.attrs = b.String()
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix += name + "."
	return &c
}

func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			appendAttr(b, p, g)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(prefix)
	b.WriteString(a.Key)
	b.WriteByte('=')
	s := a.Value.String()
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		s = strconv.Quote(s)
	}
	b.WriteString(s)
}
