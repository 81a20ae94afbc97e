package main

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/resp3"
)

// noloopCheck shows which writes made on a connection with CLIENT TRACKING
// on BCAST PREFIX user_ NOLOOP still send that connection an invalidate
// push: a plain command, a pipelined LMOVE, MULTI/EXEC, EVAL (a script), and
// as a control a write from another connection.
func noloopCheck(ctx context.Context, o *opts, admin *redis.Client) error {
	rc, err := dialRESP3(o.addr)
	if err != nil {
		return err
	}
	defer rc.c.Close()
	if _, err := rc.do("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "user_", "NOLOOP"); err != nil {
		return err
	}
	cases := []struct {
		name string
		key  string
		run  func(key string)
	}{
		{"LPUSH on the tracking connection", "user_t1_messages", func(k string) { rc.write("LPUSH", k, "x") }},
		{"LMOVE on the tracking connection", "user_t2_messages", func(k string) {
			admin.LPush(ctx, k, "x")
			time.Sleep(50 * time.Millisecond)
			drainPushes(rc) // the admin's LPUSH hint
			rc.write("LMOVE", k, "{"+k+"}:p", "RIGHT", "LEFT")
		}},
		{"MULTI/EXEC LMOVE on the tracking connection", "user_t3_messages", func(k string) {
			admin.LPush(ctx, k, "x")
			time.Sleep(50 * time.Millisecond)
			drainPushes(rc)
			rc.write("MULTI")
			rc.write("LMOVE", k, "{"+k+"}:p", "RIGHT", "LEFT")
			rc.write("EXEC")
		}},
		{"EVAL LMOVE (script) on the tracking connection", "user_t4_messages", func(k string) {
			admin.LPush(ctx, k, "x")
			time.Sleep(50 * time.Millisecond)
			drainPushes(rc)
			rc.write("EVAL", "return redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')", "2", k, "{"+k+"}:p")
		}},
		{"LPUSH from another connection (control)", "user_t5_messages", func(k string) { admin.LPush(ctx, k, "x") }},
	}
	for _, c := range cases {
		admin.Del(ctx, c.key, "{"+c.key+"}:p")
		time.Sleep(50 * time.Millisecond)
		drainPushes(rc)
		c.run(c.key)
		rc.write("PING")
		_ = rc.w.Flush()
		time.Sleep(100 * time.Millisecond)
		rc.write("PING")
		_ = rc.w.Flush()
		hinted := false
		pongs := 0
		for pongs < 2 {
			_ = rc.c.SetReadDeadline(time.Now().Add(2 * time.Second))
			v, err := rc.read()
			if err != nil {
				return err
			}
			if p, ok := v.(resp3.Push); ok && p.Kind == "invalidate" {
				if keys, _ := p.Vals[0].([]any); len(keys) > 0 {
					for _, k := range keys {
						if k == c.key {
							hinted = true
						}
					}
				}
			}
			if s, ok := v.(string); ok && s == "PONG" {
				pongs++
			}
		}
		fmt.Printf("RESULT noloop case=%q invalidate_received=%v\n", c.name, hinted)
	}
	return nil
}

// drainPushes reads whatever is buffered or arrives within 20 ms.
func drainPushes(rc *respConn) {
	for {
		_ = rc.c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := rc.read(); err != nil {
			_ = rc.c.SetReadDeadline(time.Time{})
			return
		}
	}
}
