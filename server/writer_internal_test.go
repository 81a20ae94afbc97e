package server

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The outbox state machine, driven directly: a net.Pipe blocks each write
// until the other end reads, which lets the test hold the writer in a
// write while it queues more.
func newPipeConn(t *testing.T, maxQueued int) (*conn, net.Conn) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	return &conn{fd: 1, nc: server, writeTimeout: time.Minute, maxQueued: maxQueued, m: newMetrics()}, client
}

func batch(n int) *ticket { return batchOf(n, 0) }

// batchOf is a ticket of n bytes of value v.
func batchOf(n int, v byte) *ticket {
	b := make([]byte, n)
	for i := range b {
		b[i] = v
	}
	return newTicket(&b, 1, time.Now(), newMetrics())
}

// One batch of any size may wait beyond the one being written, and is no
// part of the bound; past four times the bound beyond it the connection is
// closed, failing what it held.
func TestOutboxBoundsWhatWaitsBeyondOneBatch(t *testing.T) {
	c, client := newPipeConn(t, 100)
	first := batch(60)
	c.send(first) // the writer takes it and blocks: nobody reads the pipe yet
	waitFor(t, func() bool { c.out.mu.Lock(); defer c.out.mu.Unlock(); return len(c.out.queue) == 0 })
	huge := batch(1000) // over the bound, but alone: it waits
	c.send(huge)
	if closed(c) {
		t.Fatal("a single batch over the bound closed the connection")
	}
	var rest []*ticket
	for i := range 7 { // the 1000 waits; 7 × 60 bytes beyond it > 4 × 100: closed
		b := batch(60)
		rest = append(rest, b)
		c.send(b)
		if i < 6 && closed(c) {
			t.Fatalf("closed with %d bytes beyond the first batch, within 4 × the bound", (i+1)*60)
		}
	}
	if !closed(c) {
		t.Fatal("the outbox is over 4 × the bound and the connection is open")
	}
	for _, b := range append(rest, huge) {
		if written, _ := b.wait(); written {
			t.Fatal("a batch of a connection closed as too slow counts as written")
		}
	}
	go io.Copy(io.Discard, client) // the first write may end now
	first.wait()
	waitFor(t, func() bool { return strings.Contains(c.closedBecause(), "client too slow") })
}

// Batches go out in the order they were queued, and each counts as written
// once its bytes went out.
func TestWriterWritesBatchesInOrder(t *testing.T) {
	c, client := newPipeConn(t, 1<<20)
	a := batchOf(10, 'a')
	c.send(a) // taken at once; blocks in the pipe
	waitFor(t, func() bool { c.out.mu.Lock(); defer c.out.mu.Unlock(); return len(c.out.queue) == 0 })
	b, d := batchOf(20, 'b'), batchOf(30, 'd')
	c.send(b)
	c.send(d)
	got := make([]byte, 60)
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("a", 10) + strings.Repeat("b", 20) + strings.Repeat("d", 30); string(got) != want {
		t.Fatalf("wrote %q, want %q", got, want)
	}
	for i, tk := range []*ticket{a, b, d} {
		if written, tried := tk.wait(); !written || !tried {
			t.Fatalf("batch %d: written %v tried %v", i, written, tried)
		}
	}
}

func closed(c *conn) bool {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return c.out.closed
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(time.Millisecond)
	}
}
