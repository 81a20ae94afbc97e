package server

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// unsent is how many bytes written to nc its peer has not acknowledged yet
// (SIOCOUTQ), or -1 when that cannot be known.
func unsent(nc net.Conn) int {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	tcp, ok := nc.(interface {
		SyscallConn() (syscall.RawConn, error)
	}) // a *net.TCPConn, or the countedConn below TLS
	if !ok {
		return -1
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	if cerr := rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
			n = v
		}
	}); cerr != nil {
		return -1
	}
	return n
}

// canAskUnsent: SIOCOUTQ tells how much of what was written the peer has
// not acknowledged yet.
const canAskUnsent = true
