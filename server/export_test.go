package server

import (
	"context"
	"time"
)

// SetHook makes f run at the steps of every consumer (see hook), for tests
// that need a consumer to panic or a shutdown at a chosen step; it returns
// the function that removes it.
func SetHook(f func(ctx context.Context, user, stage string)) (restore func()) {
	hook.Store(&f)
	return func() { hook.Store(nil) }
}

// SetLeeway changes the clock skew a forgives on exp and nbf (5 s), so
// that a test of expiry need not wait out the leeway.
func SetLeeway(a *Auth, d time.Duration) { a.leeway = d }
