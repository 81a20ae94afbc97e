package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redpush/redpush/redisq"
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
	certs     *server.CertFiles // loaded from tlsCert and tlsKey
	addrGiven bool              // -addr or REDPUSH_ADDR was set
	fromEnv   map[string]bool   // flags set by REDPUSH_* variables
	probe     bool              // for healthcheck: the address and scheme only, no key files read
}

const (
	defaultRedis      = "redis://127.0.0.1:6379"
	defaultKeyPattern = "user_%s_messages"
	defaultAddr       = "0.0.0.0:9502"
	embeddedAddr      = "127.0.0.1:9502" // the quick start lets anyone push: loopback only
)

// defineFlags adds the server's flags to fs, writing into o.
func defineFlags(fs *flag.FlagSet, o *options) *string {
	c := &o.cfg
	fs.StringVar(&c.Addr, "addr", defaultAddr, "listen `address` (host:port); with -redis embedded the default is "+embeddedAddr)
	fs.StringVar(&o.redis, "redis", defaultRedis, "Redis `URL`: redis://host:6379/0 (also rediss://, unix://); Sentinel: redis://sentinel:26379?master_name=NAME[&addr=sentinel2:26379]; Cluster: redis://node1:7000?addr=node2:7000[&addr=...]; or \"embedded\" for an in-process Redis (quick start only)")
	fs.IntVar(&c.Workers, "workers", 0, "consumer tasks run at once, like task_worker_num: 1 to 100000; 0 means the default: 4096 (hinted: a task moves one user's messages, and users past it wait in line, taking turns); with -consumer blocking each online user holds one, so it bounds online users too, and the default is -max-users's")
	fs.IntVar(&c.MaxUsers, "max-users", 0, "users online at once on this process, one more gets HTTP 503: 1 to 1000000; 0 means the default, from the open-file limit: as many users as it allows, 200 files kept (one file each, its socket; two with -consumer blocking, at most 10000 then)")
	fs.StringVar(&c.KeyPattern, "key-pattern", defaultKeyPattern, "queue key of a user; %s is the user id")
	fs.StringVar(&c.Consumer, "consumer", server.ConsumerHinted, "how consumers learn of new messages: hinted (one Redis connection per master tells them, with client tracking) or blocking (a Redis connection blocked in BLMOVE per online user, as the original; Redis's maxclients bounds online users)")
	fs.StringVar(&c.Format, "format", server.FormatSwoole, "pushed frame: swoole (the original's text), raw (payload only) or json")
	fs.StringVar(&c.Instance, "instance", "", "stable instance `id`, so a restart returns its in-flight messages (default host-port; with -reuseport host-port-N, the lowest slot N no live process holds)")
	fs.BoolVar(&c.ReusePort, "reuseport", false, "listen with SO_REUSEPORT: several redpush processes share -addr's port, the kernel spreading new connections over them")
	fs.StringVar(&c.PresenceChannel, "presence-channel", server.DefaultPresenceChannel, "pub/sub `channel` on which presence events are published, {\"user\":\"42\",\"event\":\"online\"} or \"offline\", once per user per change over all instances; off: none")
	durationVar(fs, &c.InstanceTTL, "instance-ttl", 30*time.Second, "heartbeat lifetime: another instance returns this one's in-flight messages when it has been dead this `duration`: 1s to 24h; 0 means the default")
	fs.IntVar(&c.MaxMessage, "max-message", 64<<10, "largest client frame or message in bytes, larger is closed with 1009: 16 to 67108864; 0 means the default")
	fs.IntVar(&c.MaxQueuedBytes, "max-queued-bytes", 1<<20, "bytes that may wait for one client beyond its first batch; a client over it for -write-timeout, or over 4 times it, is closed with 1008: 4096 to 1073741824; 0 means the default")
	fs.IntVar(&c.MaxConnsPerUser, "max-conns-per-user", 16, "connections one user may hold on this process; one more gets HTTP 429: 1 to 100000; 0 means the default")
	fs.IntVar(&c.MaxMessageRate, "max-message-rate", 1000, "frames a client may send per second (messages, fragments, pings); past it the client is closed with 1008: 1 to 1000000; 0 means the default")
	fs.Int64Var(&c.MaxPendingBytes, "max-pending-bytes", 256<<20, "bytes the partial messages of all clients may hold together; the client past it is closed with 1008: 65536 to 68719476736; 0 means the default")
	durationVar(fs, &c.HandshakeTimeout, "handshake-timeout", 5*time.Second, "`duration` to read the request and upgrade: 100ms to 5m; 0 means the default")
	durationVar(fs, &c.IdleTimeout, "idle-timeout", 60*time.Second, "silent client: pinged after half this `duration`, closed after all of it: 100ms to 24h; 0 means the default")
	durationVar(fs, &c.WriteTimeout, "write-timeout", 10*time.Second, "a client that does not read for this `duration` is disconnected: 100ms to 10m; 0 means the default")
	durationVar(fs, &c.AckTimeout, "ack-timeout", 30*time.Second, "an ack connection (?ack=1) that leaves a pushed message unacknowledged this long gets it again, same id, \"redelivered\":true; the connection stays open: 100ms to 24h; 0 means the default")
	fs.IntVar(&c.AckWindow, "ack-window", 256, "messages one ack connection (?ack=1) may hold unacknowledged; at it nothing more is sent to it, and once every ack connection of a user is at it the user's queue waits: 1 to 100000; 0 means the default")
	durationVar(fs, &c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "`duration` to close clients and requeue in-flight messages on SIGTERM: 100ms to 1h; 0 means the default")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "require ?token=<JWT> signed with this HS256 `secret` (at least 16 bytes); sub is the user id")
	fs.StringVar(&o.jwtPubKey, "jwt-public-key", "", "require ?token=<JWT> signed for this PEM public key `file` (RSA: RS256, ECDSA: ES256)")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated browser Origins (scheme://host[:port]) allowed to connect (default: any)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "serve wss:// with this PEM certificate `file` (with -tls-key); SIGHUP reloads both files")
	fs.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key `file` of -tls-cert")
	fs.StringVar(&o.cfg.APIKey, "api-key", "", "enable POST /api/push with \"Authorization: Bearer <key>\" (off when empty)")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&o.pprof, "pprof-addr", "", "serve net/http/pprof on this `address` (e.g. 127.0.0.1:6060; off when empty)")
	return fs.String("log-level", "info", "debug, info, warn or error")
}

// parseFlags reads args, then REDPUSH_<NAME> for every flag not given on
// the command line (-key-pattern ↔ REDPUSH_KEY_PATTERN): the flag wins.
// Every setting is checked here, before anything is started or dialled.
func parseFlags(args []string, getenv func(string) string, stdout io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("redpush", flag.ContinueOnError)
	level := defineFlags(fs, o)
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
	if err := o.finish(fs, getenv, *level); err != nil {
		return nil, err
	}
	return o, nil
}

// finish applies the environment and checks and completes the options.
func (o *options) finish(fs *flag.FlagSet, getenv func(string) string, level string) error {
	var err error
	if o.fromEnv, err = fromEnv(fs, getenv); err != nil {
		return err
	}
	if err := unknownEnv(fs, os.Environ()); err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { o.addrGiven = o.addrGiven || f.Name == "addr" })
	o.addrGiven = o.addrGiven || o.fromEnv["addr"]
	if o.redis == "embedded" && !o.addrGiven {
		o.cfg.Addr = embeddedAddr
	}
	if err := o.logLevel.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("-log-level: %q is not debug, info, warn or error", level)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("-log-format: %q is not text or json", o.logFormat)
	}
	if err := o.security(); err != nil {
		return err
	}
	if err := o.cfg.Validate(); err != nil {
		return o.flagError(err)
	}
	return o.checkAddrs()
}

// checkAddrs checks the Redis URL and the pprof address, which the server
// config does not hold.
func (o *options) checkAddrs() error {
	if o.redis != "embedded" {
		if _, err := redisq.ParseEndpoint(o.redis); err != nil {
			return err
		}
	}
	if o.pprof != "" {
		if _, _, err := net.SplitHostPort(o.pprof); err != nil {
			return fmt.Errorf("%s: %q: want host:port such as 127.0.0.1:6060", o.name("pprof-addr"), o.pprof)
		}
	}
	return nil
}

// flagOf names the flag of each server.Config field.
var flagOf = map[string]string{
	"Addr": "addr", "Workers": "workers", "MaxUsers": "max-users", "Consumer": "consumer", "KeyPattern": "key-pattern", "Format": "format",
	"Instance": "instance", "InstanceTTL": "instance-ttl", "MaxMessage": "max-message", "MaxPendingBytes": "max-pending-bytes", "MaxQueuedBytes": "max-queued-bytes",
	"MaxConnsPerUser": "max-conns-per-user", "MaxMessageRate": "max-message-rate", "PresenceChannel": "presence-channel",
	"HandshakeTimeout": "handshake-timeout", "IdleTimeout": "idle-timeout",
	"WriteTimeout": "write-timeout", "ShutdownTimeout": "shutdown-timeout", "AckTimeout": "ack-timeout", "AckWindow": "ack-window",
	"AllowedOrigins": "allowed-origins",
}

// flagError rewrites a server.ConfigError in the words of the command line.
func (o *options) flagError(err error) error {
	var ce *server.ConfigError
	if !errors.As(err, &ce) || flagOf[ce.Field] == "" {
		return err
	}
	return fmt.Errorf("%s: %s is not accepted: want %s", o.name(flagOf[ce.Field]), ce.Value, ce.Want)
}

// name is how an error names a flag: as the variable when that set it.
func (o *options) name(flag string) string {
	if o.fromEnv[flag] {
		return envName(flag)
	}
	return "-" + flag
}

// fromEnv sets every flag not given on the command line from its
// REDPUSH_* variable and reports which it set.
func fromEnv(fs *flag.FlagSet, getenv func(string) string) (map[string]bool, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	set := map[string]bool{}
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
		set[f.Name] = true
	})
	return set, err
}

// unknownEnv refuses a REDPUSH_* variable that names no flag: a misspelt
// REDPUSH_ALLOWED_ORIGIN or REDPUSH_JWT_SECRETS would otherwise be ignored,
// and with it the origin check or authentication it meant to turn on.
func unknownEnv(fs *flag.FlagSet, environ []string) error {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[envName(f.Name)] = true })
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "REDPUSH_") && !known[name] {
			return fmt.Errorf("%s is not a setting of redpush (each flag -x-y is REDPUSH_X_Y; see -h)", name)
		}
	}
	return nil
}

func envName(flagName string) string {
	return "REDPUSH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage:
  redpush [flags]                              run the gateway
  redpush token -secret S -user ID [-ttl 1h]   print a token for -jwt-secret
  redpush healthcheck [-url URL | flags]       exit 0 when this server's /readyz answers 200
                                               (the container's HEALTHCHECK)
  redpush COMMAND -h                           the flags of a command

WebSocket push gateway: delivers what producers LPUSH into user_{id}_messages
to that user's WebSocket connections. Each flag can also be set with
REDPUSH_<NAME> (e.g. REDPUSH_KEY_PATTERN); the flag wins. Durations take a
unit (30s, 5m, 1h); where 0 means the default, the flag says so.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// durationValue is a time.Duration flag whose error says what is wrong: a
// bare number is the common mistake, and flag's own says "parse error".
type durationValue time.Duration

func durationVar(fs *flag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var((*durationValue)(p), name, usage)
}

func (d *durationValue) String() string { return (*time.Duration)(d).String() }

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err == nil {
		*d = durationValue(v)
		return nil
	}
	if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
		return fmt.Errorf("a duration needs a unit: %ss, %sms, %sm or %sh", s, s, s, s)
	}
	return fmt.Errorf("not a duration such as 30s, 1m30s or 500ms")
}

// embeddedNote is the start line's word on where the quick start listens.
func (o *options) embeddedNote() string {
	if o.addrGiven {
		return "listening on " + o.cfg.Addr + " as -addr says: POST /demo/push lets anyone who reaches it push to any user"
	}
	return "listening on loopback only (" + o.cfg.Addr + "): POST /demo/push lets anyone push to any user; give -addr to listen elsewhere"
}

// security turns the auth, origin and TLS flags into the server config.
func (o *options) security() error {
	c := &o.cfg
	var err error
	if o.probe {
		// A probe runs every few seconds and needs only the scheme, which
		// -tls-cert decides: it neither reads nor checks key files.
		return nil
	}
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
		if o.certs, err = server.LoadCertFiles(o.tlsCert, o.tlsKey); err != nil {
			return fmt.Errorf("-tls-cert/-tls-key: %v", err)
		}
		c.TLS = o.certs.TLSConfig()
	}
	return nil
}
