//go:build !linux || redpush_goroutines

package server

// reactor is the portable build's: none. A goroutine reads each
// connection (readLoop); reactor_linux.go has the epoll one.
type reactor struct{}

func newReactor(*Server) (*reactor, error) { return nil, nil }

func (x *reactor) add(*conn) bool { return false }
func (x *reactor) stop(*conn)     {}
func (x *reactor) count() int     { return 0 }
func (x *reactor) resume(*conn)   {}
func (x *reactor) close()         {}
