package server

import "context"

// SetHook makes f run at the steps of every consumer (see hook), for tests
// that need a consumer to panic or a shutdown at a chosen step; it returns
// the function that removes it.
func SetHook(f func(ctx context.Context, user, stage string)) (restore func()) {
	hook.Store(&f)
	return func() { hook.Store(nil) }
}
