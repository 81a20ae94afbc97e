// Command redpush is the WebSocket push gateway: flags and REDPUSH_*
// environment variables → server.Config → server.Run until SIGTERM/SIGINT.
//
//	go run ./cmd/redpush -redis embedded
//
// Exit codes: 0 after a clean shutdown, 1 when the server failed while
// running, 2 for bad flags, a bad Redis URL or Redis unreachable at start.
package main
