package taskpool

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFullPoolRefusesAtOnce(t *testing.T) {
	p, err := New(Config{Size: 2})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 2)
	for range 2 {
		if err := p.Submit(func(ctx context.Context) { started <- struct{}{}; <-ctx.Done() }); err != nil {
			t.Fatal(err)
		}
	}
	<-started
	<-started
	if err := p.Submit(func(context.Context) {}); !errors.Is(err, ErrFull) {
		t.Fatalf("Submit on a full pool = %v, want ErrFull", err)
	}
	if err := p.Shutdown(5 * time.Second); err != nil {
		t.Fatalf("Shutdown = %v; cancelling must end the tasks", err)
	}
	if err := p.Submit(func(context.Context) {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Shutdown = %v, want ErrClosed", err)
	}
}

func TestShutdownTimesOutOnTasksThatIgnoreCancel(t *testing.T) {
	p, _ := New(Config{Size: 1})
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{})
	p.Submit(func(context.Context) { close(started); <-release })
	<-started
	if err := p.Shutdown(100 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Shutdown = %v, want ErrTimeout", err)
	}
}

func TestPanicHandlerKeepsPoolUsable(t *testing.T) {
	got := make(chan any, 1)
	p, _ := New(Config{Size: 1, PanicHandler: func(v any) { got <- v }})
	defer p.Shutdown(time.Second)
	p.Submit(func(context.Context) { panic("boom") })
	if v := <-got; v != "boom" {
		t.Fatalf("panic value %v", v)
	}
	done := make(chan struct{})
	for p.Submit(func(context.Context) { close(done) }) != nil {
		// the panicked worker is being returned to the pool
	}
	<-done
}

func TestSizeFor(t *testing.T) {
	for nofile, want := range map[uint64]int{20000: 9900, 1 << 20: 10000, 1024: 412, 100: 1} {
		if got := sizeFor(nofile, 2); got != want {
			t.Errorf("sizeFor(%d, 2) = %d, want %d", nofile, got, want)
		}
	}
	for nofile, want := range map[uint64]int{20000: 19800, 1 << 20: 100000, 1024: 824, 100: 1} {
		if got := sizeFor(nofile, 1); got != want {
			t.Errorf("sizeFor(%d, 1) = %d, want %d", nofile, got, want)
		}
	}
}
