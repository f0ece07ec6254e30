// Package bridge holds the wire contract between the host and a subprocess
// guest (the Python shim): the frame format of docs/BRIDGE.md. Both ends use
// it; it imports neither host nor guest code.
//
// A frame is a 1-byte type, a 4-byte big-endian body length, then the body.
// BATCH bodies carry a topic and one Arrow IPC stream; the other frames carry
// one UTF-8 JSON object. Every length is checked against [Limits] before
// anything is allocated.
package bridge

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the bridge protocol version sent in HELLO.
const ProtocolVersion = 1

// Magic identifies the protocol in HELLO.
const Magic = "casparian-bridge"

// FrameType is the first byte of every frame.
type FrameType uint8

// Frame types, in the order a session normally sends them.
const (
	FrameHello FrameType = 0x01 // JSON Hello; must be first
	FrameBatch FrameType = 0x02 // topic + Arrow IPC stream
	FrameLog   FrameType = 0x03 // JSON LogMessage
	FrameError FrameType = 0x04 // JSON ErrorMessage; ends the session
	FrameEnd   FrameType = 0x05 // JSON EndMessage; ends the session
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "HELLO"
	case FrameBatch:
		return "BATCH"
	case FrameLog:
		return "LOG"
	case FrameError:
		return "ERROR"
	case FrameEnd:
		return "END"
	}
	return fmt.Sprintf("0x%02x", uint8(t))
}

// HeaderSize is the size of a frame header: type (1) + length (4).
const HeaderSize = 5

// MaxTopicLen is the longest topic name, in bytes.
const MaxTopicLen = 255

// Default limits.
const (
	DefaultMaxBatchFrame = 256 << 20 // 256 MiB per BATCH frame
	DefaultMaxMessage    = 1 << 20   // 1 MiB per HELLO/LOG/ERROR/END frame
)

// Limits caps frame sizes. Zero fields take the defaults.
type Limits struct {
	// MaxBatchFrame caps a BATCH body (topic + Arrow IPC stream). Default 256 MiB.
	MaxBatchFrame uint32
	// MaxMessage caps the JSON body of HELLO, LOG, ERROR and END. Default 1 MiB.
	MaxMessage uint32
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxBatchFrame == 0 {
		l.MaxBatchFrame = DefaultMaxBatchFrame
	}
	if l.MaxMessage == 0 {
		l.MaxMessage = DefaultMaxMessage
	}
	return l
}

// Errors returned by the decoder. All are protocol violations except
// ErrFrameTooLarge, which callers report as a resource limit.
var (
	ErrUnknownFrame  = errors.New("unknown frame type")
	ErrFrameTooLarge = errors.New("frame exceeds the size limit")
	ErrTruncated     = errors.New("truncated frame")
	ErrBadTopic      = errors.New("invalid topic")
	ErrBadMessage    = errors.New("invalid JSON message")
)

// Hello is the first frame a guest sends.
type Hello struct {
	Magic      string `json:"magic"`
	Version    int    `json:"version"`
	SDKVersion string `json:"sdk_version,omitempty"`
	Runtime    string `json:"runtime,omitempty"`
	PID        int    `json:"pid,omitempty"`
}

// LogMessage is a structured log line sent by the SDK's logger.
type LogMessage struct {
	Level   string `json:"level"`
	Logger  string `json:"logger,omitempty"`
	Message string `json:"message"`
}

// ErrorMessage reports a failure of the plugin; it ends the session.
type ErrorMessage struct {
	// Kind is a guest error code: PLUGIN_ERROR, SCHEMA, PROTOCOL, INPUT, RESOURCE_LIMIT.
	Kind      string `json:"kind"`
	Type      string `json:"type,omitempty"` // exception class name
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// EndMessage ends a successful session.
type EndMessage struct {
	Batches int64 `json:"batches"`
	Rows    int64 `json:"rows"`
}

// Frame is one decoded frame.
type Frame struct {
	Type FrameType
	// Len is the body length from the header.
	Len uint32
	// Topic is set for BATCH frames.
	Topic string
	// Body streams the Arrow IPC bytes of a BATCH frame. It is valid until
	// the next call to Reader.Next, which discards whatever was not read.
	Body *io.LimitedReader
	// Payload holds the JSON body of the other frames.
	Payload []byte
}

// Decode unmarshals a JSON payload strictly (unknown fields are allowed,
// trailing data is not).
func (f *Frame) Decode(v any) error {
	dec := json.NewDecoder(bytes.NewReader(f.Payload))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w in %s frame: %v", ErrBadMessage, f.Type, err)
	}
	if dec.More() {
		return fmt.Errorf("%w in %s frame: trailing data", ErrBadMessage, f.Type)
	}
	return nil
}

// Reader decodes frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r    io.Reader
	lim  Limits
	hdr  [HeaderSize]byte
	body *io.LimitedReader
}

// NewReader returns a Reader with the given limits (zero fields = defaults).
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{r: r, lim: lim.WithDefaults()}
}

// Next reads the next frame. io.EOF means the stream ended cleanly between
// frames; any other error is a protocol violation (or ErrFrameTooLarge).
func (r *Reader) Next() (Frame, error) {
	if r.body != nil {
		if r.body.N > 0 {
			if _, err := io.Copy(io.Discard, r.body); err != nil {
				return Frame{}, err
			}
			if r.body.N > 0 {
				return Frame{}, fmt.Errorf("%w: BATCH body ended early", ErrTruncated)
			}
		}
		r.body = nil
	}
	n, err := io.ReadFull(r.r, r.hdr[:])
	if err != nil {
		if err == io.EOF && n == 0 {
			return Frame{}, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return Frame{}, fmt.Errorf("%w: header has %d of %d bytes", ErrTruncated, n, HeaderSize)
		}
		return Frame{}, err
	}
	f := Frame{Type: FrameType(r.hdr[0]), Len: binary.BigEndian.Uint32(r.hdr[1:])}
	switch f.Type {
	case FrameBatch:
		if f.Len > r.lim.MaxBatchFrame {
			return Frame{}, fmt.Errorf("%w: BATCH frame of %d bytes, limit %d", ErrFrameTooLarge, f.Len, r.lim.MaxBatchFrame)
		}
		if f.Len < 2 {
			return Frame{}, fmt.Errorf("%w: BATCH frame of %d bytes has no topic", ErrTruncated, f.Len)
		}
		var tl [2]byte
		if _, err := io.ReadFull(r.r, tl[:]); err != nil {
			return Frame{}, fmt.Errorf("%w: BATCH topic length: %v", ErrTruncated, err)
		}
		n := uint32(binary.BigEndian.Uint16(tl[:]))
		if n == 0 || n > MaxTopicLen || n > f.Len-2 {
			return Frame{}, fmt.Errorf("%w: topic length %d (frame %d bytes)", ErrBadTopic, n, f.Len)
		}
		topic := make([]byte, n)
		if _, err := io.ReadFull(r.r, topic); err != nil {
			return Frame{}, fmt.Errorf("%w: BATCH topic: %v", ErrTruncated, err)
		}
		if err := ValidateTopic(string(topic)); err != nil {
			return Frame{}, err
		}
		f.Topic = string(topic)
		r.body = &io.LimitedReader{R: r.r, N: int64(f.Len - 2 - n)}
		f.Body = r.body
		return f, nil
	case FrameHello, FrameLog, FrameError, FrameEnd:
		if f.Len > r.lim.MaxMessage {
			return Frame{}, fmt.Errorf("%w: %s frame of %d bytes, limit %d", ErrFrameTooLarge, f.Type, f.Len, r.lim.MaxMessage)
		}
		f.Payload = make([]byte, f.Len)
		if _, err := io.ReadFull(r.r, f.Payload); err != nil {
			return Frame{}, fmt.Errorf("%w: %s body: %v", ErrTruncated, f.Type, err)
		}
		return f, nil
	default:
		return Frame{}, fmt.Errorf("%w 0x%02x (header bytes % x); the guest is not speaking the bridge protocol", ErrUnknownFrame, r.hdr[0], r.hdr[:])
	}
}

// ValidateTopic checks a topic name: 1–255 bytes of ASCII letters, digits,
// '_', '-' and '.', not starting with '.' or '-'. Topics become file and
// table names, so nothing else is allowed.
func ValidateTopic(t string) error {
	if len(t) == 0 || len(t) > MaxTopicLen {
		return fmt.Errorf("%w %q: must be 1-%d characters", ErrBadTopic, t, MaxTopicLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		ok := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			(i > 0 && (c == '-' || c == '.'))
		if !ok {
			return fmt.Errorf("%w %q: use letters, digits, '_', '-' and '.' (not first)", ErrBadTopic, t)
		}
	}
	return nil
}

// Writer encodes frames. It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	hdr [HeaderSize + 2]byte
}

// NewWriter returns a Writer.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteJSON writes a HELLO, LOG, ERROR or END frame with v encoded as
// canonical JSON (see MarshalCanonical).
func (w *Writer) WriteJSON(t FrameType, v any) error {
	b, err := MarshalCanonical(v)
	if err != nil {
		return err
	}
	return w.WriteRaw(t, b)
}

// WriteRaw writes a frame with an arbitrary body (tests use it to build bad frames).
func (w *Writer) WriteRaw(t FrameType, body []byte) error {
	w.hdr[0] = byte(t)
	binary.BigEndian.PutUint32(w.hdr[1:5], uint32(len(body)))
	if _, err := w.w.Write(w.hdr[:HeaderSize]); err != nil {
		return err
	}
	_, err := w.w.Write(body)
	return err
}

// WriteBatch writes a BATCH frame: topic and one complete Arrow IPC stream.
func (w *Writer) WriteBatch(topic string, ipcStream []byte) error {
	if err := ValidateTopic(topic); err != nil {
		return err
	}
	w.hdr[0] = byte(FrameBatch)
	binary.BigEndian.PutUint32(w.hdr[1:5], uint32(2+len(topic)+len(ipcStream)))
	binary.BigEndian.PutUint16(w.hdr[5:7], uint16(len(topic)))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return err
	}
	if _, err := io.WriteString(w.w, topic); err != nil {
		return err
	}
	_, err := w.w.Write(ipcStream)
	return err
}

// MarshalCanonical encodes v as JSON the way both ends do: keys sorted, no
// insignificant whitespace, no HTML escaping, non-ASCII left as UTF-8. The
// Python SDK produces the same bytes with
// json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
func MarshalCanonical(v any) ([]byte, error) {
	// Round-trip through a generic value so struct fields come out sorted too.
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var generic any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(generic); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
