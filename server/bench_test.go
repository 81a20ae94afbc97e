package server

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpush/redpush/redisq"
)

// Hot paths, with allocations reported: `go test -bench . -benchmem ./server`.

func BenchmarkEncodeBatch(b *testing.B) {
	for _, format := range []string{FormatSwoole, FormatRaw, FormatJSON} {
		b.Run(format, func(b *testing.B) {
			enc := encoder{format: format}
			msgs := make([]string, 128)
			for i := range msgs {
				msgs[i] = fmt.Sprintf("message %d with a typical 64-byte payload ..................", i)
			}
			buf := make([]byte, 0, 64<<10)
			b.ReportAllocs()
			for b.Loop() {
				buf = enc.appendFrames(buf[:0], "42", "user_42_messages", msgs)
			}
		})
	}
}

func BenchmarkEncodeOne(b *testing.B) {
	enc := encoder{format: FormatSwoole}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = enc.appendFrame(buf[:0], "42", "user_42_messages", "order shipped")
	}
}

// BenchmarkRegistryLookup is what the relay does per batch: find the user
// among 10,000 registered in the hub (user → session → connections) and
// hand the batch to its connection. Each connection is on one real
// loopback socket whose peer counts what it receives: the run fails unless
// every timed lookup found its user and wrote its frame.
func BenchmarkRegistryLookup(b *testing.B) {
	const users = 10000
	q, err := redisq.New(nil, nil, redisq.Config{Instance: "bench"}) // names queues only: no Redis call is timed
	if err != nil {
		b.Fatal(err)
	}
	h := newHub(nil, q, encoder{format: FormatRaw}, nil)
	sink, received := countingConn(b)
	names := make([]string, users)
	for u := range users {
		names[u] = fmt.Sprint("u", u)
		s := &session{user: names[u], wake: make(chan struct{}, 1), done: make(chan struct{}), refs: 1}
		c := &conn{fd: uint64(u), user: s.user, sess: s, nc: sink.nc, writeTimeout: 10e9, m: h.m}
		s.conns = append(s.conns, c)
		h.users[s.user] = s
		h.conns[c.fd] = c
	}
	msgs := []string{"order shipped"}
	frame := len(h.enc.appendFrames(nil, "u0", "user_u0_messages", msgs))
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		h.deliverUser(names[n%users], "other", msgs)
		n++
	}
	b.StopTimer()
	want := int64(n * frame)
	deadline := time.Now().Add(10 * time.Second)
	for received.Load() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := received.Load(); got != want {
		b.Fatalf("the peer received %d bytes for %d lookups of %d-byte frames, want %d: lookups missed the registry", got, n, frame, want)
	}
}

// countingConn returns a conn on a real loopback socket and the count of
// bytes its peer has received.
func countingConn(b *testing.B) (*conn, *atomic.Int64) {
	var n atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		peer, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for {
			k, err := peer.Read(buf)
			n.Add(int64(k))
			if err != nil {
				return
			}
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	return &conn{nc: nc, writeTimeout: 10e9}, &n
}
