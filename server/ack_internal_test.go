package server

import (
	"errors"
	"testing"
)

// An ack names an id. A message sent here again (its batch went back to
// the queue) behind one this client never read: the late ack of its first
// copy, arriving now, must not acknowledge the one before it. (Review
// finding; failed before the again mark: Z counted as acknowledged.)
func TestALateAckCoversNothingUnread(t *testing.T) {
	a := newAcker(10)
	const X, Z = 100, 90
	a.release(a.record([]uint64{X}), true) // first copy of X, back to the queue
	end := a.record([]uint64{Z, X})        // Z (never sent here) before X again
	if err := a.ack(X); err != nil {
		t.Fatal(err)
	}
	if acked, _ := a.state(end - 1); acked {
		t.Fatal("Z counts as acknowledged by an ack sent before the client could read it")
	}
	// In order, as a client acknowledges what it reads: both count.
	if a.ack(Z) != nil || a.ack(X) != nil {
		t.Fatal("in-order acks refused")
	}
	if acked, _ := a.state(end); !acked || a.room() != 10 {
		t.Fatalf("after Z and X: acked %v, room %d", acked, a.room())
	}
}

func TestAckerWindowAndRefusals(t *testing.T) {
	a := newAcker(3)
	end := a.record([]uint64{5, 6})
	if a.room() != 1 {
		t.Fatalf("room %d, want 1", a.room())
	}
	if err := a.ack(4); !errors.Is(err, errAckUnknown) {
		t.Fatalf("ack of an id below every id sent: %v", err)
	}
	if err := a.ack(7); !errors.Is(err, errAckUnknown) {
		t.Fatalf("ack of an id above every id sent: %v", err)
	}
	b := newAcker(3)
	bend := b.record([]uint64{5, 7})
	if err := b.ack(6); err != nil { // within the range: another tab's, ignored
		t.Fatalf("ack of an id within the range: %v", err)
	}
	if acked, _ := b.state(bend - 1); acked {
		t.Fatal("an ack of an id never sent here acknowledged something")
	}
	if !a.expire(end) || a.room() != 3 {
		t.Fatalf("expire: room %d", a.room())
	}
	if _, expired := a.state(end); !expired {
		t.Fatal("not expired")
	}
	if err := a.ack(6); err != nil { // late: ignored
		t.Fatal(err)
	}
	if acked, _ := a.state(end); acked {
		t.Fatal("a late ack of an expired batch acknowledged it")
	}
}

// A batch that comes back whole is acknowledged by a cumulative ack of its
// last message, as before it went back: a client that acknowledges every
// few messages is not sent the batch for ever. (Second review: seen
// failing with "again" for any id not above every id sent.)
func TestACumulativeAckOfABatchSentAgainCounts(t *testing.T) {
	a := newAcker(10)
	a.release(a.record([]uint64{7, 8, 9}), true)
	end := a.record([]uint64{7, 8, 9})
	if err := a.ack(9); err != nil {
		t.Fatal(err)
	}
	if acked, _ := a.state(end); !acked {
		t.Fatal("the ack of the last message of a batch sent again did not count")
	}
	if len(a.back) != 0 {
		t.Fatalf("acknowledged ids still remembered as gone back: %v", a.back)
	}
	// Ids settled by another connection do not come back: not remembered.
	a.release(a.record([]uint64{10}), false)
	if len(a.back) != 0 {
		t.Fatalf("an id acknowledged elsewhere remembered: %v", a.back)
	}
}

// What went back is remembered for maxBack windows at most.
func TestGoneBackIsBounded(t *testing.T) {
	a := newAcker(2)
	for id := uint64(1); id <= 20; id++ {
		a.release(a.record([]uint64{id}), true)
	}
	if len(a.back) != maxBack*2 || len(a.backQ) != maxBack*2 {
		t.Fatalf("remembers %d (%d queued), want %d", len(a.back), len(a.backQ), maxBack*2)
	}
	if _, ok := a.back[20]; !ok {
		t.Fatal("the newest forgotten")
	}
	// An id acknowledged, then gone back again, is queued twice: trimming
	// its older entry keeps it. (Senior review: the older entry's trim
	// deleted the live one.)
	b := newAcker(1) // remembers 4
	b.release(b.record([]uint64{1}), true)
	b.record([]uint64{1})
	if err := b.ack(1); err != nil || len(b.back) != 0 { // sent again and acknowledged: no longer gone back
		t.Fatalf("ack: %v, back %v", err, b.back)
	}
	b.expire(b.record([]uint64{1})) // sent once more, and back again
	for id := uint64(2); id <= 4; id++ {
		b.release(b.record([]uint64{id}), true) // pushes 1's older entry out
	}
	if _, ok := b.back[1]; !ok {
		t.Fatal("trimming an id's stale entry forgot the id")
	}
}
