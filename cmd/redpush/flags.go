package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/redpush/redpush/server"
)

// options is everything the command line sets.
type options struct {
	cfg       server.Config
	redis     string
	pprof     string
	logLevel  slog.Level
	logFormat string
	jwtSecret string
	jwtPubKey string
	origins   string
	tlsCert   string
	tlsKey    string
}

// parseFlags reads args, then REDPUSH_<NAME> for every flag not given on
// the command line (-key-pattern ↔ REDPUSH_KEY_PATTERN): the flag wins.
func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("redpush", flag.ContinueOnError)
	c := &o.cfg
	fs.StringVar(&c.Addr, "addr", "0.0.0.0:9502", "listen address")
	fs.StringVar(&o.redis, "redis", "redis://127.0.0.1:6379", "Redis URL: redis://host:6379/0 (also rediss://, unix://); Sentinel: redis://sentinel:26379?master_name=NAME[&addr=sentinel2:26379]; Cluster: redis://node1:7000?addr=node2:7000[&addr=...]; or \"embedded\" for an in-process Redis (quick start only)")
	fs.IntVar(&c.Workers, "workers", 0, "users consumed at once, like task_worker_num (0: from the open-file limit, at most 10000)")
	fs.StringVar(&c.KeyPattern, "key-pattern", "user_%s_messages", "queue key of a user; %s is the user id")
	fs.StringVar(&c.Format, "format", server.FormatSwoole, "pushed frame: swoole (the original's text), raw (payload only) or json")
	fs.StringVar(&c.Instance, "instance", "", "stable instance id, so a restart returns its in-flight messages (default host-port)")
	fs.DurationVar(&c.InstanceTTL, "instance-ttl", 30*time.Second, "heartbeat lifetime: another instance returns this one's in-flight messages when it has been dead this long")
	fs.IntVar(&c.MaxMessage, "max-message", 64<<10, "largest client frame or message in bytes; larger is closed with 1009")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 5*time.Second, "time to read the request and upgrade")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 60*time.Second, "silent client: pinged after half, closed after all of it")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 10*time.Second, "a client that does not read for this long is disconnected")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "time to close clients and requeue in-flight messages on SIGTERM")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "require ?token=<JWT> signed with this HS256 secret (at least 16 bytes); sub is the user id")
	fs.StringVar(&o.jwtPubKey, "jwt-public-key", "", "require ?token=<JWT> signed for this PEM public key (RSA: RS256, ECDSA: ES256)")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated browser Origins allowed to connect (default: any)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve wss:// with this PEM certificate (with -tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key of -tls-cert")
	fs.StringVar(&c.APIKey, "api-key", "", "enable POST /api/push with \"Authorization: Bearer <key>\" (off when empty)")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&o.pprof, "pprof-addr", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060; off when empty)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, stdout)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := fromEnv(fs, getenv); err != nil {
		return nil, err
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, fmt.Errorf("-log-level: %q is not debug, info, warn or error", *level)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return nil, fmt.Errorf("-log-format: %q is not text or json", o.logFormat)
	}
	if c.Instance == "" {
		c.Instance = defaultInstance(c.Addr)
	}
	if err := o.security(); err != nil {
		return nil, err
	}
	return o, nil
}

func fromEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v := getenv(name)
		if given[f.Name] || v == "" || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v", name, v, e)
		}
	})
	return err
}

func envName(flagName string) string {
	return "REDPUSH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "Usage: redpush [flags]\n\nWebSocket push gateway: delivers what producers LPUSH into user_{id}_messages\nto that user's WebSocket connections. Each flag can also be set with\nREDPUSH_<NAME> (e.g. REDPUSH_KEY_PATTERN); the flag wins.\n\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// defaultInstance derives a stable id from the host name and listen port,
// so a restarted instance finds its own processing lists again.
func defaultInstance(addr string) string {
	host, _ := os.Hostname()
	_, port, _ := net.SplitHostPort(addr)
	id := strings.Map(func(r rune) rune {
		if r < 128 && (r == '-' || r == '.' || r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return r
		}
		return '_'
	}, host+"-"+port)
	return id[:min(len(id), 128)]
}

// security turns the auth, origin and TLS flags into the server config.
func (o *options) security() error {
	c := &o.cfg
	var err error
	switch {
	case o.jwtSecret != "" && o.jwtPubKey != "":
		return errors.New("give -jwt-secret or -jwt-public-key, not both")
	case o.jwtSecret != "":
		c.Auth, err = server.NewHMACAuth([]byte(o.jwtSecret))
	case o.jwtPubKey != "":
		pem, rerr := os.ReadFile(o.jwtPubKey)
		if rerr != nil {
			return fmt.Errorf("-jwt-public-key: %v", rerr)
		}
		c.Auth, err = server.NewPublicKeyAuth(pem)
	}
	if err != nil {
		return err
	}
	for _, origin := range strings.Split(o.origins, ",") {
		if origin = strings.TrimSpace(origin); origin != "" {
			c.AllowedOrigins = append(c.AllowedOrigins, origin)
		}
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert/-tls-key: %v", err)
		}
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return nil
}
