package redisq

import (
	"strconv"
	"time"
)

// SetRefuseAgainAfter shortens how long a refused CLIENT ID is not asked
// again, for a test; it returns the function that restores it.
func SetRefuseAgainAfter(d time.Duration) (restore func()) {
	old := refuseAgainAfter
	refuseAgainAfter = d
	return func() { refuseAgainAfter = old }
}

// Envelope wraps payload with id, as the wrap script does in Redis.
func Envelope(id uint64, payload string) string {
	return EnvelopeMarker + strconv.FormatUint(id, 10) + ":" + payload
}
