// Package testutil starts the real parts that redpush's tests talk to: a
// redis-server on a free port ([StartRedis]), a 3-master Redis Cluster
// ([StartCluster]), a master, replica and Sentinel ([StartSentinel]), and
// WebSocket clients over real TCP ([Dial]). Nothing here mocks Redis or the
// network.
//
// Tests that need redis-server fail, not skip, when it is missing: `make
// test` installs it.
package testutil
