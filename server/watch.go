package server

import "sync/atomic"

// watch is where a reactor connection stands (reactor_linux.go), as a
// state machine of its own so that tests can drive it. Its socket waits
// in the reactor's epoll set, armed for one readable event (EPOLLONESHOT);
// the event hands it to one reader task, which reads what came and
// arms it again. The end of the connection can be asked at any time (the
// server closes it: stop): an armed connection ends at once, by whoever
// asked; one being read ends when its reader is done. A reader task that
// finds the connection's answers piling up (a client that sends and does
// not read) leaves it paused instead of armed: nothing reads it until its
// outbox drained and resume arms it again (TCP then pushes back on the
// client, as on the goroutine path, where the reader blocks in a write).
// Exactly one party ends it.
type watch struct{ state atomic.Int32 }

const (
	watchArmed      int32 = iota // in the epoll set, waiting for bytes
	watchReading                 // a reader task has it
	watchStopWanted              // a reader task has it, and its end was asked
	watchEnded                   // ended, or being ended: events for it are stale
	watchPaused                  // not in the epoll set: its outbox is to drain first
)

// fire takes an armed connection for its reader task (true). False: the
// event is stale (the connection ended).
func (w *watch) fire() bool { return w.state.CompareAndSwap(watchArmed, watchReading) }

// rearm is the reader task's way out when it read all there was: true,
// and the caller arms the socket again; false when its end was asked
// meanwhile, and the caller ends it.
func (w *watch) rearm() bool {
	if w.state.CompareAndSwap(watchReading, watchArmed) {
		return true
	}
	w.state.Store(watchEnded) // stop wanted: only this task can have it
	return false
}

// pause is the reader task's way out when the connection's answers pile
// up: true, and it is paused; false when its end was asked meanwhile, and
// the caller ends it.
func (w *watch) pause() bool {
	if w.state.CompareAndSwap(watchReading, watchPaused) {
		return true
	}
	w.state.Store(watchEnded) // stop wanted: only this task can have it
	return false
}

// resume arms a paused connection again (true: the caller arms its
// socket); false if it is not paused.
func (w *watch) resume() bool { return w.state.CompareAndSwap(watchPaused, watchArmed) }

// finish is the reader task's way out when the connection ended (a close
// frame, an error, EOF): from now on it is ended.
func (w *watch) finish() { w.state.Store(watchEnded) }

// claim takes an armed connection to end it (true), and leaves one that a
// reader task has: bytes came, so it is not the silent one to end.
func (w *watch) claim() bool { return w.state.CompareAndSwap(watchArmed, watchEnded) }

// stop asks for the end of the connection: true when the caller is to end
// it (it was armed or paused: no reader task has it); false when its
// reader task will, or it ended already.
func (w *watch) stop() bool {
	for {
		switch s := w.state.Load(); s {
		case watchArmed, watchPaused:
			if w.state.CompareAndSwap(s, watchEnded) {
				return true
			}
		case watchReading:
			if w.state.CompareAndSwap(watchReading, watchStopWanted) {
				return false
			}
		default:
			return false
		}
	}
}
