package transport

import (
	"encoding/binary"
	"fmt"
)

// ZMTP 3.x wire constants.
const (
	greetingLen = 64

	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04

	// maxCmdNameCapture is the number of leading command-body bytes kept to
	// recognise the handshake commands (1 length byte + "INITIATE").
	maxCmdNameCapture = 1 + len("INITIATE")
)

type parserState uint8

const (
	stGreeting parserState = iota
	stFlags
	stSize
	stBody
)

// frameParser is a streaming ZMTP 3.x parser over the bytes a peer sends.
// It never buffers bodies: it only tracks where frames start and how long
// they are, so it can reject an oversized frame as soon as its size field is
// complete. feed may be called with arbitrary chunks.
type frameParser struct {
	maxFrame uint64
	maxMsg   uint64

	state    parserState
	greetOff int     // bytes of greeting consumed
	flags    byte    // flags of the current frame
	sizeBuf  [8]byte // size field being assembled
	sizeN    int     // bytes of size field read
	sizeLen  int     // 1 or 8
	body     uint64  // body bytes still to come
	msgTotal uint64  // body bytes of the current multipart message

	// Handshake tracking: until the peer's READY/INITIATE command has been
	// received completely, command names are captured.
	handshakeDone bool
	cmdBuf        [maxCmdNameCapture]byte
	cmdN          int
}

func newFrameParser(maxFrame, maxMsg uint64) *frameParser {
	return &frameParser{maxFrame: maxFrame, maxMsg: maxMsg}
}

// feed consumes b. It returns a *LimitError on the first violation; the
// parser must not be used afterwards.
func (p *frameParser) feed(b []byte) error {
	for len(b) > 0 {
		switch p.state {
		case stGreeting:
			k := min(greetingLen-p.greetOff, len(b))
			for i := 0; i < k; i++ {
				switch pos := p.greetOff + i; pos {
				case 0:
					if b[i] != 0xFF {
						return newLimitError(KindBadGreeting, "bad signature byte 0: %#x", b[i])
					}
				case 9:
					if b[i] != 0x7F {
						return newLimitError(KindBadGreeting, "bad signature byte 9: %#x", b[i])
					}
				case 10:
					if b[i] < 3 {
						return newLimitError(KindBadGreeting, "unsupported ZMTP major version %d", b[i])
					}
				}
			}
			p.greetOff += k
			b = b[k:]
			if p.greetOff == greetingLen {
				p.state = stFlags
			}

		case stFlags:
			p.flags = b[0]
			b = b[1:]
			p.sizeN = 0
			p.sizeLen = 1
			if p.flags&flagLong != 0 {
				p.sizeLen = 8
			}
			p.state = stSize

		case stSize:
			k := min(p.sizeLen-p.sizeN, len(b))
			copy(p.sizeBuf[p.sizeN:], b[:k])
			p.sizeN += k
			b = b[k:]
			if p.sizeN < p.sizeLen {
				continue
			}
			var size uint64
			if p.sizeLen == 1 {
				size = uint64(p.sizeBuf[0])
			} else {
				size = binary.BigEndian.Uint64(p.sizeBuf[:])
			}
			if err := p.startFrame(size); err != nil {
				return err
			}

		case stBody:
			k := uint64(len(b))
			if k > p.body {
				k = p.body
			}
			if p.flags&flagCommand != 0 && !p.handshakeDone && p.cmdN < len(p.cmdBuf) {
				p.cmdN += copy(p.cmdBuf[p.cmdN:], b[:k])
			}
			p.body -= k
			b = b[k:]
			if p.body == 0 {
				p.endFrame()
			}
		}
	}
	return nil
}

func (p *frameParser) startFrame(size uint64) error {
	if size > p.maxFrame {
		return newLimitError(KindFrameTooLarge, "frame of %d bytes exceeds limit %d", size, p.maxFrame)
	}
	if p.flags&flagCommand == 0 {
		p.msgTotal += size // cannot overflow: both terms <= maxFrame/maxMsg
		if p.msgTotal > p.maxMsg {
			return newLimitError(KindMessageTooLarge, "message of %d+ bytes exceeds limit %d", p.msgTotal, p.maxMsg)
		}
	}
	p.cmdN = 0
	p.body = size
	if size == 0 {
		p.endFrame()
		return nil
	}
	p.state = stBody
	return nil
}

func (p *frameParser) endFrame() {
	if p.flags&flagCommand != 0 && !p.handshakeDone {
		if p.cmdN >= 1 {
			n := int(p.cmdBuf[0])
			if 1+n <= p.cmdN {
				switch string(p.cmdBuf[1 : 1+n]) {
				case "READY", "INITIATE":
					p.handshakeDone = true
				}
			}
		}
	}
	if p.flags&flagMore == 0 {
		p.msgTotal = 0
	}
	p.state = stFlags
}

// LimitKind classifies a protocol violation.
type LimitKind string

// Violation kinds reported in LimitError.Kind.
const (
	KindFrameTooLarge   LimitKind = "frame-too-large"
	KindMessageTooLarge LimitKind = "message-too-large"
	KindBadGreeting     LimitKind = "bad-greeting"
	KindBadHandshake    LimitKind = "bad-handshake"
	KindSendBufferFull  LimitKind = "send-buffer-full"
	KindWriteTimeout    LimitKind = "write-timeout"
)

// LimitError reports a connection closed because the peer violated a limit
// or the protocol. It implements net.Error with Timeout() == false so that
// zmq4 treats the connection as closed.
type LimitError struct {
	Kind LimitKind
	Msg  string
}

func newLimitError(kind LimitKind, format string, args ...any) *LimitError {
	return &LimitError{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

func (e *LimitError) Error() string { return "transport: " + string(e.Kind) + ": " + e.Msg }

// Timeout reports false: the violation is permanent.
func (e *LimitError) Timeout() bool { return false }

// Temporary reports false (kept for net.Error).
func (e *LimitError) Temporary() bool { return false }
