package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/redpush/redpush/redisq"
)

// presenceCmd is `redpush presence [-redis URL] 42 43`: one JSON line per
// user, as GET /api/presence answers it, read from Redis directly (no
// server needs to run). -redis and -key-pattern default to REDPUSH_REDIS
// and REDPUSH_KEY_PATTERN, as for the server. Exit 1 if Redis cannot be
// read.
func presenceCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redpush presence", flag.ContinueOnError)
	url := fs.String("redis", cmp.Or(getenv("REDPUSH_REDIS"), defaultRedis), "Redis `URL`, as for the server")
	pattern := fs.String("key-pattern", cmp.Or(getenv("REDPUSH_KEY_PATTERN"), defaultKeyPattern), "queue key of a user, as for the server")
	users, code, done := parseSubArgs(fs, "[-redis URL] USER [USER ...]", args, stdout, stderr)
	if done {
		return code
	}
	if len(users) == 0 {
		fmt.Fprintln(stderr, "redpush presence: name at least one user id")
		return 2
	}
	for _, u := range users {
		if strings.HasPrefix(u, "-") {
			fmt.Fprintf(stderr, "redpush presence: %s: flags go before the user ids\n", u)
			return 2
		}
		if !redisq.ValidID(u) {
			fmt.Fprintf(stderr, "redpush presence: %q is not a user id (1-128 characters of A-Z a-z 0-9 _ . : -)\n", u)
			return 2
		}
	}
	redisq.SetLogger(slog.New(slog.DiscardHandler)) // go-redis's retries: the one error below says it
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := redisq.ParseEndpoint(*url); err != nil {
		fmt.Fprintf(stderr, "redpush presence: -redis: %v\n", err)
		return 2
	}
	clients, err := redisq.Dial(ctx, *url, 1)
	if err != nil {
		fmt.Fprintf(stderr, "redpush presence: %v\n", err)
		return 1
	}
	defer clients.Close()
	q, err := redisq.New(clients.Blocking, clients.Command, redisq.Config{KeyPattern: *pattern, Instance: "presence-cli"})
	if err != nil {
		fmt.Fprintf(stderr, "redpush presence: %v\n", err)
		return 2
	}
	ps, err := q.ReadPresence(ctx, users)
	if err != nil {
		fmt.Fprintf(stderr, "redpush presence: %v\n", err)
		return 1
	}
	enc := json.NewEncoder(stdout)
	for i, u := range users {
		_ = enc.Encode(struct {
			User        string `json:"user"`
			Online      bool   `json:"online"`
			Connections int    `json:"connections"`
		}{u, ps[i].Online, ps[i].Connections})
	}
	return 0
}
