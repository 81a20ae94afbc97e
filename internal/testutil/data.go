package testutil

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
)

// BigMessages returns n distinct messages of about 60 KB, in send order.
// A hundred of them (6 MB) are more than the socket buffers of a client
// that does not read can hold, so a server's write of them stays in flight.
func BigMessages(n int) []string {
	big := strings.Repeat("x", 60000)
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%03d%s", i, big)
	}
	return out
}

// Seq returns n distinct short messages prefix-00000, prefix-00001, …
func Seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	return out
}

// Any converts strings to the []any that go-redis variadics take.
func Any(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers: a log sink.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
