package redisq_test

import (
	"errors"
	"testing"

	"github.com/redpush/redpush/redisq"
)

func TestParseEnvelope(t *testing.T) {
	m := redisq.EnvelopeMarker
	for _, tc := range []struct {
		in      string
		id      uint64
		payload string
		ok      bool
	}{
		{redisq.Envelope(42, "hi"), 42, "hi", true},
		{m + "7:", 7, "", true},
		{m + "007:x:y", 7, "x:y", true},
		{m + "1234567890123456789:p", 1234567890123456789, "p", true},
		{m + "12345678901234567890:p", 0, m + "12345678901234567890:p", false}, // 20 digits
		{m + "0:p", 0, m + "0:p", false},
		{m + "x:p", 0, m + "x:p", false},
		{m + "+5:p", 0, m + "+5:p", false},
		{m + "5", 0, m + "5", false},
		{"plain", 0, "plain", false},
	} {
		id, p, ok := redisq.ParseEnvelope(tc.in)
		if id != tc.id || p != tc.payload || ok != tc.ok {
			t.Errorf("%q: got %d %q %v, want %d %q %v", tc.in, id, p, ok, tc.id, tc.payload, tc.ok)
		}
	}
}

// Wrap gives the raw messages of a batch just popped new ids, in Redis,
// and leaves an envelope's id alone; run again it returns the same ids; a
// processing list that holds another number of messages is refused.
func TestWrap(t *testing.T) {
	q, rds := newQueue(t, 0)
	rc := rds.Client()
	ctx := t.Context()
	proc := q.ProcessingKey("u")
	bogus := redisq.EnvelopeMarker + "no-id"
	old := redisq.Envelope(5, "old")
	// Newest at the left: held (not in the batch), then the batch
	// "a", old, bogus, oldest first.
	if err := rc.RPush(ctx, proc, bogus, old, "a", "held").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Wrap(ctx, "u", 3, 5); !errors.Is(err, redisq.ErrDiverged) {
		t.Fatalf("Wrap with the wrong count: %v, want ErrDiverged", err)
	}
	ids, err := q.Wrap(ctx, "u", 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Oldest first: "a", old, bogus.
	if len(ids) != 3 || ids[1] != 5 || ids[0] == 5 || ids[2] != ids[0]+1 {
		t.Fatalf("ids %v", ids)
	}
	list := rc.LRange(ctx, proc, 0, -1).Val()
	want := []string{redisq.Envelope(ids[2], bogus), old, redisq.Envelope(ids[0], "a"), "held"}
	for i := range want {
		if list[i] != want[i] {
			t.Fatalf("processing list %q, want %q", list, want)
		}
	}
	again, err := q.Wrap(ctx, "u", 3, 4) // go-redis repeating a call whose reply was lost
	if err != nil || again[0] != ids[0] || again[1] != ids[1] || again[2] != ids[2] {
		t.Fatalf("second Wrap: %v, %v; want %v", again, err, ids)
	}
	if p := redisq.Unwrap(list[0]); p != bogus {
		t.Fatalf("unwrapped %q, want the payload %q", p, bogus)
	}
	// The counter starts at Redis's clock in microseconds: above every id
	// a counter that expired gave before.
	if ids[0] < 1_700_000_000_000_000 {
		t.Fatalf("first id %d is not clock-based", ids[0])
	}
	if ttl := rc.PTTL(ctx, "{user_u_messages}:ackseq").Val(); ttl <= 0 {
		t.Fatalf("the id counter does not expire (PTTL %v)", ttl)
	}
}
