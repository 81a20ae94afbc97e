package server

import (
	"bufio"
	"strings"
	"testing"

	"github.com/redpush/redpush/redisq"
)

// The parsers that see untrusted bytes: the query, the request head, the
// whole handshake and the frame reader. `go test` runs the seeds (f.Add and
// testdata/fuzz); `make fuzz` explores each for 60 s.

func FuzzUserFromURI(f *testing.F) {
	for _, s := range []string{"/?user_id=42", "?user_id=a.b", "/x/y?user_id=1&user_id=2", "/", "/?user_id=%zz", "/?user_id=%7B%7D", "/?a=b&user_id=" + strings.Repeat("9", 128)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		id, status, err := (&Server{}).identify(uri)
		if err != nil && status != 400 {
			t.Fatalf("status %d for %q", status, uri)
		}
		if err == nil && !redisq.ValidID(id.user) {
			t.Fatalf("accepted invalid user id %q from %q", id.user, uri)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line reason %q", err)
		}
	})
}

func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /?user_id=1 HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nupgrade:websocket\r\n\r\n",
		"\r\n\r\n", "garbage", "GET / HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		br := bufio.NewReaderSize(strings.NewReader(in), maxHead)
		upgrade, err := readHead(br)
		end := strings.Index(in, "\r\n\r\n")
		if err == nil && (end < 0 || end+4 > maxHead) {
			t.Fatalf("accepted a head without its end: %q", in)
		}
		if err == nil && upgrade != strings.Contains(strings.ToLower(in[:end]), "\r\nupgrade:") {
			t.Fatalf("upgrade = %v for %q", upgrade, in)
		}
		if br.Buffered() < min(len(in), maxHead) && err == nil && end+4 > br.Buffered() {
			t.Fatalf("consumed part of the head")
		}
	})
}
