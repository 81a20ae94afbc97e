//go:build !unix

package server

import (
	"errors"
	"syscall"
)

func reusePort(_, _ string, _ syscall.RawConn) error {
	return errors.New("-reuseport needs SO_REUSEPORT, which this system lacks")
}
