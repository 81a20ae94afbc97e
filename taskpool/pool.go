package taskpool

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/panjf2000/ants/v2"
)

// Config configures a Pool. The zero value is usable.
type Config struct {
	// Size is the most tasks that run at once. Default: DefaultSize(2).
	Size int
	// PanicHandler is called with the value of a task that panicked; the
	// worker survives. Default: the panic is swallowed silently by ants'
	// default logger.
	PanicHandler func(any)
}

// Pool runs tasks on a bounded set of goroutines.
type Pool struct {
	ants   *ants.Pool
	ctx    context.Context
	cancel context.CancelFunc
}

// New creates a pool.
func New(cfg Config) (*Pool, error) {
	if cfg.Size <= 0 {
		cfg.Size = DefaultSize(2)
	}
	opts := []ants.Option{
		// A full pool must become a refusal, never a wait: Submit on a full
		// blocking ants pool waits forever.
		ants.WithNonblocking(true),
	}
	if cfg.PanicHandler != nil {
		opts = append(opts, ants.WithPanicHandler(cfg.PanicHandler))
	}
	p, err := ants.NewPool(cfg.Size, opts...)
	if err != nil {
		return nil, fmt.Errorf("taskpool: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool{ants: p, ctx: ctx, cancel: cancel}, nil
}

// Submit starts task on a free worker. It never blocks: it returns ErrFull
// when all workers are busy and ErrClosed after Shutdown.
func (p *Pool) Submit(task func(ctx context.Context)) error {
	if p.ctx.Err() != nil {
		return ErrClosed
	}
	err := p.ants.Submit(func() { task(p.ctx) })
	switch {
	case errors.Is(err, ants.ErrPoolOverload):
		return ErrFull
	case errors.Is(err, ants.ErrPoolClosed):
		return ErrClosed
	}
	return err
}

// Cap is the pool's size. Running is how many tasks run now.
func (p *Pool) Cap() int     { return p.ants.Cap() }
func (p *Pool) Running() int { return p.ants.Running() }

// Resize changes the pool's size (Cap); running tasks are not stopped.
func (p *Pool) Resize(n int) { p.ants.Tune(n) }

// Shutdown cancels the context of every task and waits up to timeout for
// them to return. ants' Release alone would not stop a running task.
func (p *Pool) Shutdown(timeout time.Duration) error {
	p.cancel()
	if err := p.ants.ReleaseTimeout(timeout); err != nil {
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return nil
}

// DefaultSize is how many consumers this process can afford when each
// online user costs filesPerUser open files (1: its socket, with hinted
// consumption; 2: its socket and a blocked Redis connection): the
// open-file limit less a reserve for listeners, logs and the Redis
// clients, divided by that, at most 100,000 (10,000 with 2 files a user:
// Redis's default maxclients would refuse more anyway). With this
// machine's 20,000-file limit that is 19,800 or 9,900.
func DefaultSize(filesPerUser int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1000
	}
	return sizeFor(lim.Cur, filesPerUser)
}

func sizeFor(nofile uint64, filesPerUser int) int {
	const reserve, least = 200, 1
	per, most := uint64(max(filesPerUser, 1)), uint64(100_000)
	if per > 1 {
		most = 10_000
	}
	if nofile <= reserve+per*least {
		return least
	}
	return int(min((nofile-reserve)/per, most))
}
