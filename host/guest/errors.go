package guest

import (
	"errors"
	"fmt"
	"strings"
)

// The error taxonomy shared by all guest kinds. A guest returns an *Error whose
// Kind is one of these; callers test with errors.Is(err, guest.ErrTimeout).
var (
	// ErrTimeout: the plugin did not connect, went idle past the read timeout,
	// or ran past its deadline.
	ErrTimeout = errors.New("TIMEOUT")
	// ErrCrashed: the plugin process or module died (non-zero exit, signal, trap).
	ErrCrashed = errors.New("CRASHED")
	// ErrPlugin: the plugin reported an error (an exception, a returned error).
	ErrPlugin = errors.New("PLUGIN_ERROR")
	// ErrProtocol: the plugin broke the guest protocol (junk bytes, oversized
	// frames, invalid Arrow, missing end of stream).
	ErrProtocol = errors.New("PROTOCOL")
	// ErrSchema: a batch did not match its topic's schema, or a topic name is invalid.
	ErrSchema = errors.New("SCHEMA")
	// ErrCancelled: the run was cancelled by the host (ABORT, shutdown).
	ErrCancelled = errors.New("CANCELLED")
	// ErrResourceLimit: the plugin exceeded a memory, size or similar limit.
	ErrResourceLimit = errors.New("RESOURCE_LIMIT")
	// ErrInput: the input could not be read (missing file, permission).
	ErrInput = errors.New("INPUT")
	// ErrSink: writing the output failed (disk full, permission).
	ErrSink = errors.New("SINK")
)

var kinds = []error{ErrTimeout, ErrCrashed, ErrPlugin, ErrProtocol, ErrSchema, ErrCancelled, ErrResourceLimit, ErrInput, ErrSink}

// KindFromCode maps a code such as "TIMEOUT" (as carried across a process
// boundary) back to its sentinel error. Unknown codes map to ErrPlugin.
func KindFromCode(code string) error {
	for _, k := range kinds {
		if k.Error() == code {
			return k
		}
	}
	return ErrPlugin
}

// Error is the one error type guests return.
type Error struct {
	// Kind is one of the sentinel errors above.
	Kind error
	// Message says what happened, in one line or a few.
	Message string
	// Traceback is the plugin's traceback or panic stack, if any.
	Traceback string
	// ExitCode is the process exit status (-1 when killed by a signal or unknown).
	ExitCode int
	// Signal names the signal that killed the process, if any.
	Signal string
	// Stderr holds the last lines the plugin wrote to stderr, if relevant.
	Stderr string
	// Hint tells the user what to do next.
	Hint string
	// Err is the underlying cause, if any.
	Err error
}

// Code is the stable string form of Kind ("TIMEOUT", "CRASHED", ...).
func (e *Error) Code() string {
	if e.Kind == nil {
		return ErrPlugin.Error()
	}
	return e.Kind.Error()
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Code())
	b.WriteString(": ")
	b.WriteString(e.Message)
	if e.Err != nil && !strings.Contains(e.Message, e.Err.Error()) {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Detail renders the error for a person: message, traceback, stderr tail and hint.
func (e *Error) Detail() string {
	var b strings.Builder
	b.WriteString(e.Error())
	if e.Traceback != "" {
		b.WriteString("\n")
		b.WriteString(strings.TrimRight(e.Traceback, "\n"))
	}
	if e.Stderr != "" {
		b.WriteString("\nlast stderr lines:\n")
		b.WriteString(strings.TrimRight(e.Stderr, "\n"))
	}
	if e.Hint != "" {
		b.WriteString("\nhint: ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Is makes errors.Is(err, guest.ErrTimeout) work.
func (e *Error) Is(target error) bool { return e.Kind == target }

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an *Error of the given kind.
func Errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...), ExitCode: -1}
}

// AsError returns err as an *Error, wrapping foreign errors with the given kind.
func AsError(err error, kind error) *Error {
	if err == nil {
		return nil
	}
	var ge *Error
	if errors.As(err, &ge) {
		return ge
	}
	return &Error{Kind: kind, Message: err.Error(), ExitCode: -1, Err: err}
}

// JobError formats err for a person with the job prefix the whole product
// uses: "[Job 42] TIMEOUT: ...".
func JobError(jobID int64, err error) string {
	if err == nil {
		return ""
	}
	var ge *Error
	if errors.As(err, &ge) {
		return fmt.Sprintf("[Job %d] %s", jobID, ge.Detail())
	}
	return fmt.Sprintf("[Job %d] %s", jobID, err.Error())
}
