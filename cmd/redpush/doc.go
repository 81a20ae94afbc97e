// Command redpush is the WebSocket push gateway: flags and REDPUSH_*
// environment variables → server.Config → server.Run until SIGTERM/SIGINT.
//
//	go run ./cmd/redpush -redis embedded
//
// Subcommands: `redpush token` (a token for -jwt-secret) and `redpush
// healthcheck` (the container's HEALTHCHECK; it finds the server from the
// same flags, REDPUSH_* variables, or the server's command line).
//
// Every setting is checked before anything starts. Exit codes: 0 after a
// clean shutdown, 1 when the server failed while running, 2 for any failure
// to start (bad flags, a value out of range, a bad Redis URL, Redis
// unreachable, the listen address in use), reported as one line
// "redpush: …" on stderr. SIGHUP reloads the TLS certificate and key files.
package main
