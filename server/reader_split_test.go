package server

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/gobwas/ws"
)

// feedAll runs a frame reader over in, handed over in pieces of the given
// sizes (the rest in one last piece), and returns what it answered and why
// it stopped.
func feedAll(in []byte, pieces []int) (answers [][]byte, end string, held int64) {
	budget := &partialBudget{max: 1 << 12}
	r := &frameReader{max: 1 << 10, reply: []byte("reply"), budget: budget, rs: &readState{rate: frameRate{max: 1 << 20}},
		state: ws.StateServerSide, send: func(p []byte) error {
			answers = append(answers, bytes.Clone(p))
			return nil
		}}
	var err error
	for _, n := range pieces {
		n = min(n, len(in))
		if err = r.feed(in[:n]); err != nil {
			break
		}
		in = in[n:]
	}
	if err == nil {
		err = r.feed(in)
	}
	if err != nil {
		end = fmt.Sprintf("%T %v", err, err)
		if ce, ok := err.(*closeErr); ok {
			end = fmt.Sprint(ce.code, " ", ce.reason, " ", ce.byPeer)
		}
	} else {
		end = fmt.Sprint("mid ", r.mid(), " message ", string(r.msg))
	}
	budget.release(len(r.msg))
	return answers, end, budget.held.Load()
}

// FuzzFrameReaderSplits: the reader is a state machine fed with bytes as
// they come (a reactor task reads what one readable event brings): however
// the client's bytes are split — inside a header, a mask, a payload —
// it answers the same, ends the same way, and holds the same message, as
// when they come at once.
func FuzzFrameReaderSplits(f *testing.F) {
	frame, cat := clientFrame, catFrames
	long := string(bytes.Repeat([]byte("x"), 300)) // a 16-bit length
	for _, seed := range [][]byte{
		cat(frame(true, ws.OpText, "hi"), frame(true, ws.OpPing, "p")),
		cat(frame(false, ws.OpText, "a"), frame(true, ws.OpPing, "mid"), frame(true, ws.OpContinuation, long)),
		cat(frame(true, ws.OpBinary, long), frame(true, ws.OpClose, "\x03\xe8bye")),
		cat(frame(true, ws.OpText, "\xff")),
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},
		cat(frame(false, ws.OpText, long), frame(false, ws.OpContinuation, long)), // ends mid message
	} {
		f.Add(seed, []byte{1, 1, 3, 7, 2})
		f.Add(seed, []byte{5, 0, 9})
	}
	f.Fuzz(func(t *testing.T, in, split []byte) {
		pieces := make([]int, len(split))
		for i, b := range split {
			pieces[i] = int(b)
		}
		wantAnswers, wantEnd, _ := feedAll(in, nil)
		answers, end, held := feedAll(in, pieces)
		if end != wantEnd {
			t.Fatalf("split %v: ends %q, at once %q", pieces, end, wantEnd)
		}
		if len(answers) != len(wantAnswers) {
			t.Fatalf("split %v: %d answers, at once %d", pieces, len(answers), len(wantAnswers))
		}
		for i := range answers {
			if !bytes.Equal(answers[i], wantAnswers[i]) {
				t.Fatalf("split %v: answer %d = %q, at once %q", pieces, i, answers[i], wantAnswers[i])
			}
		}
		if held != 0 {
			t.Fatalf("%d bytes of the partial budget never given back", held)
		}
	})
}

// Byte by byte, every frame of a mixed stream is answered in order.
func TestFrameReaderByteByByte(t *testing.T) {
	var in bytes.Buffer
	_ = ws.WriteFrame(&in, ws.MaskFrame(ws.NewFrame(ws.OpText, false, []byte("hel"))))
	_ = ws.WriteFrame(&in, ws.MaskFrame(ws.NewFrame(ws.OpPing, true, []byte("are you there"))))
	_ = ws.WriteFrame(&in, ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("lo"))))
	_ = ws.WriteFrame(&in, ws.MaskFrame(ws.NewFrame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))))
	ones := make([]int, in.Len())
	for i := range ones {
		ones[i] = 1
	}
	answers, end, held := feedAll(in.Bytes(), ones)
	pong := ws.MustCompileFrame(ws.NewPongFrame([]byte("are you there")))
	if len(answers) != 2 || !bytes.Equal(answers[0], pong) || string(answers[1]) != "reply" {
		t.Fatalf("answers %q, want the pong then the reply", answers)
	}
	if end != "1001 bye true" || held != 0 {
		t.Fatalf("ended %q holding %d, want the client's close 1001", end, held)
	}
}
