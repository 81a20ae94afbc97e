package server

import (
	"net"
	"sync"
	"time"
)

// refusalBurst is how many refused handshakes are logged per second; the
// rest are counted and reported with the next line written.
const refusalBurst = 10

// refusalLog rate-limits the info lines of refused handshakes: an operator
// needs to see why clients are refused, but a flood of bad clients must not
// flood the log. The redpush_handshakes_refused_total counters count all.
type refusalLog struct {
	mu      sync.Mutex
	window  time.Time // start of the current second
	n       int       // lines written in it
	dropped int       // lines not written since the last one that was
}

// allow reports whether a line may be written now and how many were
// dropped before it.
func (l *refusalLog) allow(now time.Time) (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= refusalBurst {
		l.dropped++
		return false, 0
	}
	l.n++
	dropped, l.dropped = l.dropped, 0
	return true, dropped
}

// refuse counts a refused handshake and logs it with its reason and the
// client's address, within the rate limit.
func (s *Server) refuse(status int, reason string, remote net.Addr) {
	s.stats.refused(status)
	ok, dropped := s.refusals.allow(time.Now())
	if !ok {
		return
	}
	attrs := []any{"status", status, "reason", reason, "remote", remote.String()}
	if dropped > 0 {
		attrs = append(attrs, "not_logged_before", dropped)
	}
	s.log.Info("handshake refused", attrs...)
}
