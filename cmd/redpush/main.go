package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"

	"github.com/alicebob/miniredis/v2"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
	"github.com/redpush/redpush/taskpool"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	o, err := parseFlags(args, os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "redpush: %v (see redpush -h)\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))
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
