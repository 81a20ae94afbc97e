package redisq

import "time"

// SetRefuseAgainAfter shortens how long a refused CLIENT ID is not asked
// again, for a test; it returns the function that restores it.
func SetRefuseAgainAfter(d time.Duration) (restore func()) {
	old := refuseAgainAfter
	refuseAgainAfter = d
	return func() { refuseAgainAfter = old }
}
