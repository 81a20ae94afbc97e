package server

import (
	"sync"
	"sync/atomic"
	"testing"
)

// The watch's transitions, one at a time.
func TestWatchTransitions(t *testing.T) {
	var w watch
	if !w.fire() || w.fire() {
		t.Fatal("an armed watch fires once")
	}
	if !w.rearm() || !w.fire() {
		t.Fatal("rearmed, it fires again")
	}
	if w.stop() {
		t.Fatal("stop while a reader has it: the reader ends it")
	}
	if w.rearm() {
		t.Fatal("a reader whose connection's end was asked must not rearm")
	}
	if w.fire() || w.stop() {
		t.Fatal("ended: stale events and later stops do nothing")
	}
	var v watch
	if !v.stop() || v.fire() || v.stop() {
		t.Fatal("stopping an armed watch ends it, once")
	}
	var c watch
	if !c.claim() || c.fire() {
		t.Fatal("claimed while armed: ended")
	}
	var d watch
	d.fire()
	if d.claim() || !d.rearm() {
		t.Fatal("a claim leaves a watch that a reader has alone")
	}
	var p watch
	p.fire()
	if !p.pause() || p.fire() || p.claim() {
		t.Fatal("paused: no event, no idle claim")
	}
	if !p.resume() || p.resume() || !p.fire() {
		t.Fatal("resumed once, it is armed again")
	}
	if p.stop() || p.pause() {
		t.Fatal("a reader whose connection's end was asked must not pause")
	}
	var q watch
	q.fire()
	q.pause()
	if !q.stop() || q.resume() {
		t.Fatal("stopping a paused watch ends it")
	}
	var f watch
	f.fire()
	f.finish()
	if f.stop() || f.fire() {
		t.Fatal("finished by its reader: nothing more")
	}
}

// Whatever the interleaving of a reader's rearm and a stop, exactly one
// of them ends the connection.
func TestWatchEndsOnce(t *testing.T) {
	for range 10_000 {
		var w watch
		w.fire()
		var ends atomic.Int32
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if !w.rearm() {
				ends.Add(1)
			} else if w.fire() { // the next event, if it comes first
				if !w.rearm() {
					ends.Add(1)
				}
			}
		}()
		go func() {
			defer wg.Done()
			if w.stop() {
				ends.Add(1)
			}
		}()
		wg.Wait()
		if n := ends.Load(); n != 1 {
			t.Fatalf("ended %d times", n)
		}
	}
}
