package resp3

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestAppendCommand(t *testing.T) {
	got := string(AppendCommand(nil, "LPUSH", "k", "a\r\nb", ""))
	want := "*4\r\n$5\r\nLPUSH\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$0\r\n\r\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// Every RESP3 type a hint connection can receive, as redis-server 7.0
// sends it (HELLO's map, an invalidate push, FLUSHALL's null push, an
// error, LMOVE's null, LLEN's integer).
func TestRead(t *testing.T) {
	in := "%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:7\r\n" +
		">2\r\n$10\r\ninvalidate\r\n*1\r\n$16\r\nuser_42_messages\r\n" +
		">2\r\n$10\r\ninvalidate\r\n_\r\n" +
		"-DIVERGED the list\r\n" +
		"!9\r\nSYNTAX no\r\n" +
		"_\r\n" + "$-1\r\n" + ":12\r\n" + "+OK\r\n" + "#t\r\n" + ",1.5\r\n" +
		"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n" + // an attribute, then its value
		"~2\r\n+a\r\n+b\r\n" + "=7\r\ntxt:abc\r\n"
	want := []any{
		[]any{"server", "redis", "id", int64(7)},
		Push{Kind: "invalidate", Vals: []any{[]any{"user_42_messages"}}},
		Push{Kind: "invalidate", Vals: []any{nil}},
		Error("DIVERGED the list"),
		Error("SYNTAX no"),
		nil, nil, int64(12), "OK", true, "1.5",
		"hi",
		[]any{"a", "b"}, "txt:abc",
	}
	r := NewReader(strings.NewReader(in))
	for i, w := range want {
		v, err := r.Read()
		if err != nil {
			t.Fatalf("value %d: %v", i, err)
		}
		if !reflect.DeepEqual(v, w) {
			t.Fatalf("value %d: got %#v, want %#v", i, v, w)
		}
	}
}

func TestReadRefusesWhatIsNotRESP3(t *testing.T) {
	for _, in := range []string{"?x\r\n", ":x\r\n", "$3\r\nabcde\r\n", "*x\r\n", ">0\r\n", "+no newline\n"} {
		_, err := NewReader(strings.NewReader(in)).Read()
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%q: got %v, want ErrProtocol", in, err)
		}
	}
}
