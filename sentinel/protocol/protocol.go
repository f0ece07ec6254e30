// Package protocol is the "Protocol v4" control protocol between the
// sentinel (a ZeroMQ ROUTER) and workers and publishers (DEALERs), byte-
// compatible with the original Rust/Python Casparian Flow. docs/PROTOCOL.md is
// the specification; golden vectors live in testdata/golden/.
//
// A message is two ZeroMQ frames, [header, payload]. The header is 16 bytes,
// big-endian: version (0x04), opcode, reserved u16, job_id u64, payload_len
// u32. The payload is UTF-8 JSON (one of the payload types in payloads.go) or
// empty. The ROUTER side sees an identity frame first: [identity, header,
// payload].
//
// The package does no I/O: callers hand it the frames their socket received
// and get back the frames to send. Every length is checked against the
// decoder's limits before any JSON is decoded, and Decode never copies a
// payload. It imports only the standard library.
package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Version is the protocol version byte, the first byte of every header.
const Version uint8 = 0x04

// HeaderSize is the size of the header frame. Longer header frames are
// accepted and the extra bytes ignored.
const HeaderSize = 16

// DefaultMaxPayload is the payload cap a zero Decoder applies: 64 MiB.
const DefaultMaxPayload = 64 << 20

// MaxPayloadLen is the largest payload the u32 payload_len field can
// describe; Encode refuses anything larger.
const MaxPayloadLen = math.MaxUint32

// OpCode is the second byte of the header.
type OpCode uint8

// The opcodes of §2.3 of the original system, with their wire numbers.
const (
	OpUnknown    OpCode = 0  // never sent; parses (as in Rust), receivers ignore it
	OpIdentify   OpCode = 1  // W→S IdentifyPayload, job_id 0
	OpDispatch   OpCode = 2  // S→W DispatchCommand, job_id = job
	OpAbort      OpCode = 3  // S→W empty payload, job_id = job
	OpHeartbeat  OpCode = 4  // W→S HeartbeatPayload; S→W probe with empty payload
	OpConclude   OpCode = 5  // W→S JobReceipt, job_id = job
	OpErr        OpCode = 6  // both ways, ErrorPayload
	OpReload     OpCode = 7  // API→S, S→W, empty payload
	OpPrepareEnv OpCode = 8  // S→W PrepareEnvCommand
	OpEnvReady   OpCode = 9  // W→S EnvReadyPayload
	OpDeploy     OpCode = 10 // CLI→S DeployCommand
	OpAck        OpCode = 11 // S→CLI DeployResponse
)

const maxOpCode = OpAck

var opNames = [...]string{
	OpUnknown:    "UNKNOWN",
	OpIdentify:   "IDENTIFY",
	OpDispatch:   "DISPATCH",
	OpAbort:      "ABORT",
	OpHeartbeat:  "HEARTBEAT",
	OpConclude:   "CONCLUDE",
	OpErr:        "ERR",
	OpReload:     "RELOAD",
	OpPrepareEnv: "PREPARE_ENV",
	OpEnvReady:   "ENV_READY",
	OpDeploy:     "DEPLOY",
	OpAck:        "ACK",
}

// String returns the protocol name of the opcode ("DISPATCH"), or
// "OpCode(N)" for a value outside 0–11.
func (o OpCode) String() string {
	if o.Valid() {
		return opNames[o]
	}
	return fmt.Sprintf("OpCode(%d)", uint8(o))
}

// Valid reports whether o is one of the twelve defined opcodes (UNKNOWN
// included, as in the original).
func (o OpCode) Valid() bool { return o <= maxOpCode }

// Header is a decoded 16-byte header. The version byte is implied (it is
// always Version) and the reserved field is dropped.
type Header struct {
	OpCode     OpCode
	JobID      uint64
	PayloadLen uint32
}

// Bytes packs h into its 16-byte wire form (reserved written as zero). It
// does not check the opcode; Encode does.
func (h Header) Bytes() [HeaderSize]byte {
	var b [HeaderSize]byte
	b[0] = Version
	b[1] = byte(h.OpCode)
	binary.BigEndian.PutUint64(b[4:12], h.JobID)
	binary.BigEndian.PutUint32(b[12:16], h.PayloadLen)
	return b
}

// ParseHeader unpacks a header frame. Bytes after the first 16 are ignored;
// the reserved field is ignored. Errors: *HeaderTooShortError,
// *VersionMismatchError, *InvalidOpCodeError, checked in that order.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, &HeaderTooShortError{Expected: HeaderSize, Got: len(b)}
	}
	if b[0] != Version {
		return Header{}, &VersionMismatchError{Expected: Version, Got: b[0]}
	}
	op := OpCode(b[1])
	if !op.Valid() {
		return Header{}, &InvalidOpCodeError{OpCode: b[1]}
	}
	return Header{
		OpCode:     op,
		JobID:      binary.BigEndian.Uint64(b[4:12]),
		PayloadLen: binary.BigEndian.Uint32(b[12:16]),
	}, nil
}

// Message is one protocol message without its transport identity.
type Message struct {
	OpCode OpCode
	// JobID is the queue id for job messages (DISPATCH, ABORT, CONCLUDE, and
	// ERR about a job), 0 otherwise.
	JobID uint64
	// Payload is the raw payload: UTF-8 JSON or empty. A decoded Message's
	// Payload aliases the received frame; it is not copied.
	Payload []byte
}

// NewMessage builds a message whose payload is v encoded with Marshal; a
// nil v gives an empty payload (ABORT, RELOAD, a HEARTBEAT probe).
func NewMessage(op OpCode, jobID uint64, v any) (Message, error) {
	if !op.Valid() {
		return Message{}, &InvalidOpCodeError{OpCode: uint8(op)}
	}
	m := Message{OpCode: op, JobID: jobID, Payload: []byte{}}
	if v == nil {
		return m, nil
	}
	b, err := Marshal(v)
	if err != nil {
		return Message{}, err
	}
	m.Payload = b
	return m, checkSendLen(uint64(len(b)))
}

// Unmarshal decodes the message's JSON payload into v, a pointer to one of
// the payload types (see Unmarshal).
func (m Message) Unmarshal(v any) error { return Unmarshal(m.Payload, v) }

// Header returns the header Encode writes for m.
func (m Message) Header() (Header, error) {
	if !m.OpCode.Valid() {
		return Header{}, &InvalidOpCodeError{OpCode: uint8(m.OpCode)}
	}
	if err := checkSendLen(uint64(len(m.Payload))); err != nil {
		return Header{}, err
	}
	return Header{OpCode: m.OpCode, JobID: m.JobID, PayloadLen: uint32(len(m.Payload))}, nil
}

func checkSendLen(n uint64) error {
	if n > MaxPayloadLen {
		return &PayloadTooLargeError{Size: n, Max: MaxPayloadLen}
	}
	return nil
}

// Encode returns the two frames a DEALER sends: [header, payload]. The
// payload frame is always present, empty when there is no payload (RELOAD
// included). Errors: *InvalidOpCodeError, *PayloadTooLargeError (payload
// above 4 GiB − 1, which payload_len cannot describe).
func Encode(m Message) ([][]byte, error) {
	h, err := m.Header()
	if err != nil {
		return nil, err
	}
	hb := h.Bytes()
	p := m.Payload
	if p == nil {
		p = []byte{}
	}
	return [][]byte{hb[:], p}, nil
}

// EncodeRouter returns the three frames a ROUTER sends to reach the peer
// with the given identity: [identity, header, payload].
func EncodeRouter(identity []byte, m Message) ([][]byte, error) {
	frames, err := Encode(m)
	if err != nil {
		return nil, err
	}
	return [][]byte{identity, frames[0], frames[1]}, nil
}

// Decoder decodes received messages. The zero value is ready to use; it is
// safe for concurrent use (it holds only configuration).
type Decoder struct {
	// MaxPayload caps the payload length, checked on the header's
	// payload_len and on the payload frame before anything else is done
	// with the payload. Zero means DefaultMaxPayload (64 MiB).
	MaxPayload uint32
}

func (d Decoder) maxPayload() uint32 {
	if d.MaxPayload == 0 {
		return DefaultMaxPayload
	}
	return d.MaxPayload
}

// Decode decodes the frames a DEALER receives, [header, payload], with the
// default limits. See Decoder.Decode.
func Decode(frames [][]byte) (Message, error) { return Decoder{}.Decode(frames) }

// DecodeRouter decodes the frames a ROUTER receives, [identity, header,
// payload], with the default limits. See Decoder.DecodeRouter.
func DecodeRouter(frames [][]byte) (identity []byte, m Message, err error) {
	return Decoder{}.DecodeRouter(frames)
}

// Decode decodes [header, payload]. For compatibility with the Python
// sentinel, a single header frame is accepted for RELOAD with payload_len 0
// (it is decoded as RELOAD with an empty payload); any other frame count is
// an *InvalidFrameCountError. Other errors: those of ParseHeader,
// *PayloadTooLargeError (above MaxPayload), *PayloadLengthMismatchError.
// The payload is not parsed; call Message.Unmarshal for that.
func (d Decoder) Decode(frames [][]byte) (Message, error) {
	return d.decode(frames, 0)
}

// DecodeRouter decodes [identity, header, payload] and returns the identity
// (aliasing the received frame) with the message. The frame count rules of
// Decode apply, counting the identity frame.
func (d Decoder) DecodeRouter(frames [][]byte) ([]byte, Message, error) {
	if len(frames) == 0 {
		return nil, Message{}, &InvalidFrameCountError{Expected: 3, Got: 0}
	}
	m, err := d.decode(frames[1:], 1)
	if err != nil {
		return nil, Message{}, err
	}
	return frames[0], m, nil
}

func (d Decoder) decode(frames [][]byte, extra int) (Message, error) {
	if len(frames) != 2 && len(frames) != 1 {
		return Message{}, &InvalidFrameCountError{Expected: 2 + extra, Got: len(frames) + extra}
	}
	h, err := ParseHeader(frames[0])
	if err != nil {
		return Message{}, err
	}
	if len(frames) == 1 {
		// The Python sentinel's RELOAD broadcast was a lone header frame.
		if h.OpCode != OpReload || h.PayloadLen != 0 {
			return Message{}, &InvalidFrameCountError{Expected: 2 + extra, Got: 1 + extra}
		}
		return Message{OpCode: h.OpCode, JobID: h.JobID, Payload: []byte{}}, nil
	}
	payload := frames[1]
	limit := d.maxPayload()
	if h.PayloadLen > limit {
		return Message{}, &PayloadTooLargeError{Size: uint64(h.PayloadLen), Max: uint64(limit)}
	}
	if uint64(len(payload)) > uint64(limit) {
		return Message{}, &PayloadTooLargeError{Size: uint64(len(payload)), Max: uint64(limit)}
	}
	if uint64(len(payload)) != uint64(h.PayloadLen) {
		return Message{}, &PayloadLengthMismatchError{Expected: uint64(h.PayloadLen), Got: uint64(len(payload))}
	}
	if payload == nil {
		payload = []byte{}
	}
	return Message{OpCode: h.OpCode, JobID: h.JobID, Payload: payload}, nil
}
