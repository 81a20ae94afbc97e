//go:build !linux

package server

import "net"

// unsent cannot be known here: lingering lasts until the client closes.
func unsent(net.Conn) int { return -1 }

// canAskUnsent: there is no SIOCOUTQ here; a write counts as delivery.
const canAskUnsent = false
