package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
	"github.com/redpush/redpush/taskpool"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "token" {
		return tokenCmd(args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheckCmd(args[1:], os.Stderr)
	}
	o, err := parseFlags(args, os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "redpush: %v (see redpush -h)\n", err)
		return 2
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel})
	if o.logFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel})
	}
	log := slog.New(handler)
	slog.SetDefault(log)
	o.cfg.Logger = log
	redisq.SetLogger(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if o.pprof != "" {
		go servePprof(o.pprof, log)
	}
	url := o.redis
	if url == "embedded" {
		mr, err := miniredis.Run()
		if err != nil {
			fmt.Fprintf(os.Stderr, "redpush: embedded redis: %v\n", err)
			return 2
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
		o.cfg.DemoPush = true
		log.Warn("embedded in-memory Redis for the quick start: messages live only as long as this process; POST /demo/push lets anyone push to any user",
			"addr", mr.Addr(), "try", fmt.Sprintf("redis-cli -p %s LPUSH user_42_messages hi", mr.Port()))
	}
	if o.cfg.Workers <= 0 {
		o.cfg.Workers = taskpool.DefaultSize()
	}
	clients, err := redisq.Dial(ctx, url, o.cfg.Workers)
	if err != nil {
		fmt.Fprintf(os.Stderr, "redpush: %v\n", err)
		return 2
	}
	defer clients.Close()

	srv, err := server.New(o.cfg, clients)
	if err != nil {
		fmt.Fprintf(os.Stderr, "redpush: %v\n", err)
		return 2
	}
	if err := srv.Run(ctx); err != nil {
		log.Error("redpush stopped with an error", "err", err)
		return 1
	}
	return 0
}

// servePprof exposes the runtime profiles on their own listener, never on
// the public port.
func servePprof(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("pprof listening", "addr", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		log.Error("pprof stopped", "err", err)
	}
}

// tokenCmd is `redpush token -secret S -user 42 -ttl 1h`: it prints an HS256
// token for trying -jwt-secret.
func tokenCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redpush token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	secret := fs.String("secret", "", "the -jwt-secret of the server")
	user := fs.String("user", "", "the user id (the token's sub)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if len(*secret) < 16 {
		fmt.Fprintln(stderr, "redpush token: -secret must be at least 16 bytes")
		return 2
	}
	tok, err := server.Sign([]byte(*secret), *user, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "redpush token: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// healthcheckCmd is `redpush healthcheck -url http://127.0.0.1:9502/readyz`:
// exit 0 when the URL answers 200. The container image has no curl, so its
// HEALTHCHECK runs this.
func healthcheckCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("redpush healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:9502/readyz", "the URL that must answer 200")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(*url)
	if err != nil {
		fmt.Fprintf(stderr, "redpush healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "redpush healthcheck: %s: %s\n", *url, resp.Status)
		return 1
	}
	return 0
}
