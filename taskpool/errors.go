package taskpool

import "errors"

var (
	// ErrFull is returned by Submit when every worker is busy.
	ErrFull = errors.New("taskpool: pool is full")
	// ErrClosed is returned by Submit after Shutdown.
	ErrClosed = errors.New("taskpool: pool is shut down")
	// ErrTimeout is returned by Shutdown when tasks were still running at
	// its deadline.
	ErrTimeout = errors.New("taskpool: tasks still running at shutdown deadline")
)
