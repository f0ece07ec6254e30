package goplugin

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// Caps on one log record, so a Log event stays far below gRPC's message cap.
const (
	maxLogMessage = 64 << 10
	maxLogAttrs   = 64
	maxAttrValue  = 4 << 10
)

// logHandler is the slog.Handler behind sdk.Output.Logger: each record
// becomes a Log event on the job's stream. Groups are flattened into dotted
// keys and values are sent as strings. A record logged after the job ended
// (from a goroutine the plugin left behind) is written to stderr as an hclog
// JSON line instead, which the host also forwards.
type logHandler struct {
	out    *output
	attrs  []*pluginpb.Attr
	prefix string // open groups, "a.b."
}

var _ slog.Handler = (*logHandler)(nil)

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.out.minLevel }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	ev := &pluginpb.Log{Level: int32(r.Level), Message: truncate(r.Message, maxLogMessage), Attrs: slices.Clone(h.attrs)}
	r.Attrs(func(a slog.Attr) bool {
		ev.Attrs = appendAttr(ev.Attrs, h.prefix, a)
		return len(ev.Attrs) < maxLogAttrs
	})
	if err := h.out.send(&pluginpb.Event{Kind: &pluginpb.Event_Log{Log: ev}}); err != nil {
		writeStderrJSON(ev)
	}
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	c := *h
	c.attrs = slices.Clone(h.attrs)
	for _, a := range as {
		if len(c.attrs) >= maxLogAttrs {
			break
		}
		c.attrs = appendAttr(c.attrs, h.prefix, a)
	}
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}

func appendAttr(dst []*pluginpb.Attr, prefix string, a slog.Attr) []*pluginpb.Attr {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return dst
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			if len(dst) >= maxLogAttrs {
				break
			}
			dst = appendAttr(dst, p, g)
		}
		return dst
	}
	var v string
	if a.Value.Kind() == slog.KindTime {
		v = a.Value.Time().Format(time.RFC3339Nano)
	} else {
		v = a.Value.String()
	}
	return append(dst, &pluginpb.Attr{Key: prefix + a.Key, Value: truncate(v, maxAttrValue)})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// writeStderrJSON writes a record as one hclog JSON line on stderr.
func writeStderrJSON(ev *pluginpb.Log) {
	m := make(map[string]any, len(ev.Attrs)+3)
	for _, a := range ev.Attrs {
		m[a.Key] = a.Value
	}
	m["@level"] = hclogLevel(slog.Level(ev.Level))
	m["@message"] = ev.Message
	m["@module"] = "sdk"
	m["@timestamp"] = time.Now().Format("2006-01-02T15:04:05.000000Z07:00")
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	_, _ = os.Stderr.Write(append(b, '\n'))
}

func hclogLevel(l slog.Level) string {
	switch {
	case l < slog.LevelDebug:
		return "trace"
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	}
	return "error"
}
