package main

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// frameHandler gets one complete client frame, payload already unmasked.
// The payload aliases the read buffer: copy it to keep it.
type frameHandler func(op ws.OpCode, payload []byte)

var errFrameTooBig = errors.New("frame too big")

// maxFrame bounds what the reactor servers buffer for one partial frame.
const maxFrame = 64 << 10

// parseFrames handles every complete frame at the start of buf and returns
// how many bytes it consumed; an incomplete tail is left for the caller to
// keep until more bytes come. Used by the epoll and gnet servers, which read
// bytes first and frame them after (no blocking read per connection).
func parseFrames(buf []byte, h frameHandler) (int, error) {
	off := 0
	for {
		b := buf[off:]
		if len(b) < 2 {
			return off, nil
		}
		op := ws.OpCode(b[0] & 0x0f)
		masked := b[1]&0x80 != 0
		n := int64(b[1] & 0x7f)
		hl := 2
		switch n {
		case 126:
			if len(b) < 4 {
				return off, nil
			}
			n = int64(binary.BigEndian.Uint16(b[2:4]))
			hl = 4
		case 127:
			if len(b) < 10 {
				return off, nil
			}
			n = int64(binary.BigEndian.Uint64(b[2:10]))
			hl = 10
		}
		if n > maxFrame || n < 0 {
			return off, errFrameTooBig
		}
		var mask [4]byte
		if masked {
			if len(b) < hl+4 {
				return off, nil
			}
			copy(mask[:], b[hl:hl+4])
			hl += 4
		}
		if int64(len(b)-hl) < n {
			return off, nil
		}
		p := b[hl : hl+int(n)]
		if masked {
			ws.Cipher(p, mask, 0)
		}
		h(op, p)
		off += hl + int(n)
	}
}

// serverFrame compiles an unmasked server frame.
func serverFrame(op ws.OpCode, p []byte) []byte {
	return ws.MustCompileFrame(ws.NewFrame(op, true, p))
}
