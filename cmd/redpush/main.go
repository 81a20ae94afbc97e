package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alicebob/miniredis/v2"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run is the whole command; it returns the exit code. Every failure before
// the server serves is one line "redpush: …" on stderr and exit 2.
func run(args []string) int {
	if len(args) > 0 && args[0] == "token" {
		return tokenCmd(args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "presence" {
		return presenceCmd(args[1:], os.Getenv, os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "healthcheck" {
		return healthcheckCmd(args[1:], os.Getenv, os.Stdout, os.Stderr)
	}
	o, err := parseFlags(args, os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return fail(fmt.Errorf("%v (see redpush -h)", err))
	}
	log := newLogger(o)
	o.cfg.Logger = log
	redisq.SetLogger(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Registered before anything starts: SIGHUP's default action ends the
	// process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go reloadOnSIGHUP(ctx, hup, o.certs, log)

	if o.pprof != "" {
		ln, err := net.Listen("tcp", o.pprof)
		if err != nil {
			return fail(fmt.Errorf("-pprof-addr: %v", err))
		}
		go servePprof(ln, log)
	}
	ln, err := server.Listen(o.cfg)
	if err != nil {
		return fail(err)
	}
	defer ln.Close()
	url := o.redis
	if url == "embedded" {
		mr, err := miniredis.Run()
		if err != nil {
			return fail(fmt.Errorf("embedded redis: %v", err))
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
		o.cfg.DemoPush = true
		o.cfg.Consumer = server.ConsumerBlocking // it has no client tracking
		log.Warn("embedded in-memory Redis for the quick start: messages live only as long as this process; "+o.embeddedNote(),
			"addr", mr.Addr(), "try", fmt.Sprintf("redis-cli -p %s LPUSH %s hi", mr.Port(), demoKey(o.cfg.KeyPattern)))
	}
	// Blocking consumers (by choice, or where Redis refuses hinted
	// consumption) hold a Redis connection each: at most one per task.
	blockers := o.cfg.Workers
	if blockers == 0 {
		blockers = server.DefaultWorkers(server.ConsumerBlocking)
	}
	clients, err := redisq.Dial(ctx, url, blockers)
	if err != nil {
		return fail(err)
	}
	defer clients.Close()

	srv, err := server.New(o.cfg, clients)
	if err != nil {
		return fail(err)
	}
	if err := srv.Serve(ctx, ln); err != nil {
		if errors.Is(err, server.ErrStart) {
			return fail(err)
		}
		log.Error("redpush stopped with an error", "err", err)
		return 1
	}
	return 0
}

// fail prints the one line of a start-up failure.
func fail(err error) int {
	fmt.Fprintf(os.Stderr, "redpush: %v\n", err)
	return 2
}

func newLogger(o *options) *slog.Logger {
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel})
	if o.logFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel})
	}
	log := slog.New(handler)
	slog.SetDefault(log)
	return log
}

// demoKey is the queue of the page's default user, for the start hint.
func demoKey(pattern string) string {
	return strings.Replace(pattern, "%s", server.DemoUser, 1)
}

// reloadOnSIGHUP reloads the TLS certificate and key files on each SIGHUP;
// open connections keep theirs. Without TLS a SIGHUP is only logged.
func reloadOnSIGHUP(ctx context.Context, hup <-chan os.Signal, certs *server.CertFiles, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if certs == nil {
			log.Info("SIGHUP: no TLS certificate to reload")
		} else if err := certs.Reload(); err != nil {
			log.Error("SIGHUP: TLS certificate not reloaded; the previous one stays in use", "err", err)
		} else {
			log.Info("SIGHUP: TLS certificate reloaded")
		}
	}
}

// servePprof exposes the runtime profiles on their own listener, never on
// the public port.
func servePprof(ln net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("pprof listening", "addr", ln.Addr().String())
	if err := http.Serve(ln, mux); err != nil {
		log.Error("pprof stopped", "err", err)
	}
}
