package server

import (
	"fmt"
	"testing"
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

// BenchmarkRegistryLookup is what a consumer does per batch: snapshot the
// connections of its user while 10,000 users are registered.
func BenchmarkRegistryLookup(b *testing.B) {
	h := newHub(nil, nil, encoder{}, nil)
	var sessions []*session
	for u := range 10000 {
		s := &session{user: fmt.Sprint(u), wake: make(chan struct{}, 1), refs: 1}
		h.users[s.user] = s
		c := &conn{fd: uint64(u), sess: s}
		s.conns = append(s.conns, c)
		h.conns[c.fd] = c
		sessions = append(sessions, s)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if len(h.connsOf(sessions[i%len(sessions)])) != 1 {
			b.Fatal("lookup lost a connection")
		}
		i++
	}
}
