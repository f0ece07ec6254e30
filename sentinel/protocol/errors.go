package protocol

import (
	"errors"
	"fmt"
)

// Sentinel errors, one per error kind of the original cf_protocol crate.
// Every error this package returns matches exactly one of them with
// errors.Is, and is also a typed error (*VersionMismatchError, …) that
// errors.As extracts with the details. Receivers log such errors and drop
// the message; no ERR is sent back for a malformed message.
var (
	ErrInvalidOpCode         = errors.New("invalid opcode")
	ErrHeaderTooShort        = errors.New("header too short")
	ErrVersionMismatch       = errors.New("protocol version mismatch")
	ErrInvalidFrameCount     = errors.New("invalid frame count")
	ErrPayloadLengthMismatch = errors.New("payload length mismatch")
	ErrPayloadTooLarge       = errors.New("payload too large")
	ErrJSON                  = errors.New("invalid JSON payload")
)

// InvalidOpCodeError reports an opcode byte outside 0–11.
type InvalidOpCodeError struct {
	OpCode uint8
}

func (e *InvalidOpCodeError) Error() string {
	return fmt.Sprintf("protocol: invalid opcode %d (known opcodes are 0-%d)", e.OpCode, uint8(maxOpCode))
}

// Is reports whether target is ErrInvalidOpCode.
func (e *InvalidOpCodeError) Is(target error) bool { return target == ErrInvalidOpCode }

// HeaderTooShortError reports a header frame shorter than HeaderSize.
type HeaderTooShortError struct {
	Expected, Got int
}

func (e *HeaderTooShortError) Error() string {
	return fmt.Sprintf("protocol: header too short: got %d bytes, want %d", e.Got, e.Expected)
}

// Is reports whether target is ErrHeaderTooShort.
func (e *HeaderTooShortError) Is(target error) bool { return target == ErrHeaderTooShort }

// VersionMismatchError reports a header whose version byte is not Version.
type VersionMismatchError struct {
	Expected, Got uint8
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("protocol: version mismatch: got 0x%02x, want 0x%02x", e.Got, e.Expected)
}

// Is reports whether target is ErrVersionMismatch.
func (e *VersionMismatchError) Is(target error) bool { return target == ErrVersionMismatch }

// InvalidFrameCountError reports a multipart message with the wrong number
// of frames (Expected counts the identity frame on the ROUTER side).
type InvalidFrameCountError struct {
	Expected, Got int
}

func (e *InvalidFrameCountError) Error() string {
	return fmt.Sprintf("protocol: invalid frame count: got %d frames, want %d", e.Got, e.Expected)
}

// Is reports whether target is ErrInvalidFrameCount.
func (e *InvalidFrameCountError) Is(target error) bool { return target == ErrInvalidFrameCount }

// PayloadLengthMismatchError reports a payload frame whose length differs
// from the header's payload_len. Expected is the header value, Got the
// frame length.
type PayloadLengthMismatchError struct {
	Expected, Got uint64
}

func (e *PayloadLengthMismatchError) Error() string {
	return fmt.Sprintf("protocol: payload length mismatch: header says %d bytes, payload frame has %d", e.Expected, e.Got)
}

// Is reports whether target is ErrPayloadLengthMismatch.
func (e *PayloadLengthMismatchError) Is(target error) bool { return target == ErrPayloadLengthMismatch }

// PayloadTooLargeError reports a payload above a limit: the decoder's
// MaxPayload on receive, the u32 payload_len field on send.
type PayloadTooLargeError struct {
	Size, Max uint64
}

func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("protocol: payload too large: %d bytes, limit %d", e.Size, e.Max)
}

// Is reports whether target is ErrPayloadTooLarge.
func (e *PayloadTooLargeError) Is(target error) bool { return target == ErrPayloadTooLarge }

// JSONError reports a payload that is not valid JSON for its type, or that
// fails the type's checks (e.g. an unknown JobReceipt status).
type JSONError struct {
	// Type is the Go payload type name, e.g. "JobReceipt".
	Type string
	Err  error
}

func (e *JSONError) Error() string {
	return fmt.Sprintf("protocol: invalid JSON payload for %s: %v", e.Type, e.Err)
}

// Is reports whether target is ErrJSON.
func (e *JSONError) Is(target error) bool { return target == ErrJSON }

// Unwrap returns the underlying encoding/json (or validation) error.
func (e *JSONError) Unwrap() error { return e.Err }
