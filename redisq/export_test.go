package redisq

import "context"

// AckPopToken is ackPop with a chosen token, so that a test can replay a
// call as go-redis does when it retries one.
func (q *Queue) AckPopToken(ctx context.Context, user string, n int, token uint64) ([]string, error) {
	return q.ackPopToken(ctx, user, n, token)
}
