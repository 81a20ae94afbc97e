// Package testutil starts the real parts that redpush's tests talk to: a
// redis-server on a free port ([StartRedis]), a 3-master Redis Cluster
// ([StartCluster]), a master, replica and Sentinel ([StartSentinel]), and
// WebSocket clients over real TCP ([Dial], [DialPath]), headless Chromium
// ([Browser]), and a TCP proxy that injects network faults between a
// client and a real server ([StartProxy]: an outage, a lost reply,
// clients whose bytes stop arriving with [Proxy.MuteClients]). Nothing
// here mocks Redis or the network.
//
// Tests that need redis-server fail, not skip, when it is missing: `make
// test` installs it.
package testutil
