package goplugin

import (
	"encoding/json"
	"log/slog"
	"sort"
	"strings"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/sdk/goplugin/pluginpb"
)

// sdkRecord converts a Log event of the SDK's logger.
func sdkRecord(l *pluginpb.Log) guest.LogRecord {
	rec := guest.LogRecord{Level: slog.Level(l.GetLevel()), Message: l.GetMessage(), Stream: "sdk"}
	for _, a := range l.GetAttrs() {
		rec.Attrs = append(rec.Attrs, slog.String(a.GetKey(), a.GetValue()))
	}
	return rec
}

// parseHclog turns one hclog line into a record: a JSON line (hclog's
// JSONFormat, as go-plugin's and the SDK's loggers write) with its level,
// message, module (as the "logger" attribute) and fields, or a text line
// starting with a [LEVEL] tag. ok is false for any other line.
func parseHclog(line string) (rec guest.LogRecord, ok bool) {
	rec.Stream = "stderr"
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return rec, false
		}
		msg, ok1 := m["@message"].(string)
		lvl, ok2 := m["@level"].(string)
		if !ok1 || !ok2 {
			return rec, false
		}
		rec.Message, rec.Level = msg, hclogLevel(lvl)
		if mod, _ := m["@module"].(string); mod != "" {
			rec.Attrs = append(rec.Attrs, slog.String("logger", mod))
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			if !strings.HasPrefix(k, "@") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			rec.Attrs = append(rec.Attrs, slog.Any(k, m[k]))
		}
		return rec, true
	}
	for _, tag := range []string{"[TRACE]", "[DEBUG]", "[INFO]", "[WARN]", "[ERROR]"} {
		if strings.HasPrefix(line, tag) {
			rec.Level = hclogLevel(strings.Trim(tag, "[]"))
			rec.Message = strings.TrimSpace(strings.TrimPrefix(line, tag))
			return rec, true
		}
	}
	return rec, false
}

func hclogLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "trace":
		return slog.LevelDebug - 4
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
