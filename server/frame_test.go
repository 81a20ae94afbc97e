package server

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// The hand-written header must agree with gobwas/ws at every length class
// boundary (RFC 6455 §5.2: 7-bit, 16-bit and 64-bit lengths).
func TestAppendHeaderMatchesGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
			var want bytes.Buffer
			if err := ws.WriteHeader(&want, ws.Header{Fin: true, OpCode: op, Length: int64(n)}); err != nil {
				t.Fatal(err)
			}
			if got := appendHeader(nil, op, n); !bytes.Equal(got, want.Bytes()) {
				t.Errorf("len %d op %v: % x, want % x", n, op, got, want.Bytes())
			}
		}
	}
}

func TestEncodedFramesParseBack(t *testing.T) {
	msgs := []string{"a", strings.Repeat("b", 200), strings.Repeat("c", 70000), "\\xff"}
	buf := encoder{format: FormatRaw}.appendFrames(nil, "u", "q", msgs)
	r := bytes.NewReader(buf)
	for _, m := range msgs {
		f, err := ws.ReadFrame(r)
		if err != nil || string(f.Payload) != m || !f.Header.Fin {
			t.Fatalf("frame %q: %+v %v", m[:1], f.Header, err)
		}
	}
	if r.Len() != 0 {
		t.Fatalf("%d trailing bytes", r.Len())
	}
}
