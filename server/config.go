package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/taskpool"
)

// Config configures a Server. The zero value is usable: 0 means the default,
// never "unlimited"; a negative or absurd value is refused by New (see
// [Config.Validate]).
type Config struct {
	// Addr is where Run listens, host:port. Default "0.0.0.0:9502", as the
	// original.
	Addr string
	// Workers is how many consumers work at once (Swoole's
	// task_worker_num), 1 to 100,000. Blocking, each online user's
	// consumer holds a task for its whole session, so Workers also bounds
	// online users; hinted, a consumer holds one of Workers slots while it
	// pops, encodes and acknowledges, not while it writes or waits, and
	// one that finds every slot taken waits in line (sched.go). Default
	// (0) DefaultWorkers(Consumer).
	Workers int
	// MaxUsers is how many users can be online at once on this process,
	// 1 to 1,000,000; a new user beyond it gets HTTP 503. Each costs at
	// least its socket, an open file: the default (0) is what the
	// open-file limit affords (DefaultMaxUsers). Blocking, Workers bounds
	// online users too.
	MaxUsers int
	// KeyPattern maps a user id to its queue. Default "user_%s_messages".
	KeyPattern string
	// Format of a pushed frame: "swoole" (default), "raw" or "json".
	Format string
	// Instance is this process's stable id; one live process holds it at a
	// time (redisq.Queue.Claim). Default DefaultInstance(Addr): host-port;
	// with ReusePort, host-port-N, N the lowest slot no live process holds.
	Instance string
	// ReusePort listens with SO_REUSEPORT, so that several processes serve
	// one port (the kernel spreads new connections over them): to use more
	// cores or open files than one process has, and for restarts without
	// downtime (start the new process, then stop the old one).
	ReusePort bool
	// InstanceTTL is how long this instance's heartbeat lives in Redis; it
	// is renewed every third of it. Another instance that finds the
	// heartbeat of an instance gone returns that instance's in-flight
	// messages to their queues. 1 s to 24 h; default (0) 30 s.
	InstanceTTL time.Duration
	// MaxMessage is the largest client frame or message, in bytes; larger
	// gets close 1009. 16 B to 64 MiB; default (0) 64 KiB.
	MaxMessage int
	// MaxPendingBytes bounds the bytes that the partial messages of all
	// connections hold together (a message buffer grows as its bytes
	// arrive); the connection that would pass it is closed with 1008.
	// 64 KiB to 64 GiB; default (0) 256 MiB.
	MaxPendingBytes int64
	// MaxQueuedBytes bounds what waits for one connection beyond its first
	// batch: a connection over it for WriteTimeout, or over four times it,
	// is closed (1008). 4 KiB to 1 GiB; default (0) 1 MiB.
	MaxQueuedBytes int
	// MaxConnsPerUser bounds the connections one user may hold on this
	// process; one more gets HTTP 429 before the upgrade. 1 to 100,000;
	// default (0) 16.
	MaxConnsPerUser int
	// MaxMessageRate bounds the frames a client may send per second (data
	// frames, fragments, pings and pongs alike); past it, the connection
	// is closed with 1008. 1 to 1,000,000; default (0) 1,000.
	MaxMessageRate int
	// HandshakeTimeout bounds reading the request and writing the upgrade
	// response. 100 ms to 5 min; default (0) 5 s.
	HandshakeTimeout time.Duration
	// IdleTimeout: a client silent for half of it is pinged, silent for all
	// of it is closed. 100 ms to 24 h; default (0) 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to a client; a client that does not
	// read for that long is disconnected. 100 ms to 10 min; default (0) 10 s.
	WriteTimeout time.Duration
	// AckTimeout is how long an ack connection (?ack=1) may leave a pushed
	// message unacknowledged before it goes back to the queue, to come
	// again with the same id; the connection stays open. 100 ms to 24 h;
	// default (0) 30 s.
	AckTimeout time.Duration
	// AckWindow bounds the messages sent to one ack connection and not yet
	// acknowledged; at the bound nothing more is sent to it, and once every
	// ack connection of a user is at it, the user's consumer stops popping.
	// 1 to 100,000; default (0) 256.
	AckWindow int
	// ShutdownTimeout bounds the ordered shutdown. 100 ms to 1 h; default
	// (0) 10 s.
	ShutdownTimeout time.Duration
	// Batch is the most messages popped in one Redis round trip, 1 to
	// 10,000. Default (0) 128.
	Batch int
	// Consumer is how consumers learn of new messages: "hinted" (default:
	// one connection per Redis master with client tracking tells them,
	// and carries their pops; redisq.Hints) or "blocking" (each online
	// user's consumer blocks in BLMOVE on a Redis connection of its own,
	// the Swoole task model; Redis's maxclients then bounds online users).
	// Hinted falls back to blocking, with a warning, when Redis refuses
	// client tracking (Redis < 6, an ACL, the embedded quick-start Redis).
	Consumer string
	// DemoPush enables POST /demo/push, which LPUSHes for any user. Only for
	// the embedded quick start: it lets anyone write to any queue.
	DemoPush bool
	// Auth, when set, requires every client to present a signed token
	// (?token=<JWT>) whose subject is its user id; ?user_id= is then
	// ignored. Default nil: ?user_id= is believed, as by the original.
	Auth *Auth
	// AllowedOrigins, when not empty, refuses browsers whose Origin header is
	// not in the list with 403. Each is scheme://host[:port], as browsers
	// send it. Clients that send no Origin (not browsers) are not affected.
	// Default empty: any origin.
	AllowedOrigins []string
	// APIKey, when set, enables POST /api/push and the presence API (GET
	// and POST /api/presence), authenticated with "Authorization: Bearer
	// <APIKey>". Default empty: neither.
	APIKey string
	// PresenceChannel is the pub/sub channel of presence events
	// ({"user":"42","event":"online"} / "offline"). Default
	// "redpush:presence"; PresenceOff publishes none.
	PresenceChannel string
	// TLS, when set, makes Run serve wss:// and https:// directly. Its
	// GetCertificate may change the certificate while serving (see
	// [CertFiles]).
	TLS *tls.Config
	// Logger receives the structured log. Default slog.Default().
	Logger *slog.Logger

	slotted bool // Instance was defaulted with ReusePort: a slot is claimed at start
	// workersSet and maxUsersSet say that Workers and MaxUsers were given,
	// not defaulted: where hinted consumption falls back to blocking at
	// start, only defaults follow the mode.
	workersSet, maxUsersSet bool
}

// DefaultWorkers is the default of Config.Workers. Blocking, a task per
// online user: as many as the open-file limit affords, each user costing
// its socket and a Redis connection. Hinted: hintedWorkers.
func DefaultWorkers(consumer string) int {
	if consumer == ConsumerBlocking {
		return taskpool.DefaultSize(2)
	}
	return hintedWorkers
}

// hintedWorkers bounds the hinted consumers that work at once (pop,
// encode, acknowledge: CPU and Redis round trips). A consumer that writes
// to its connections (a write may stall on a full socket), or waits for a
// client or for Redis to come back, holds no slot (sched), so the bound
// matters when many queues fill at once, after an outage: those past it
// wait in line and take turns (yieldAfter).
const hintedWorkers = 4096

// DefaultMaxUsers is the default of Config.MaxUsers: as many users as the
// open-file limit affords, each costing its socket and, blocking, a Redis
// connection (taskpool.DefaultSize).
func DefaultMaxUsers(consumer string) int {
	if consumer == ConsumerBlocking {
		return taskpool.DefaultSize(2)
	}
	return taskpool.DefaultSize(1)
}

// The values of Config.Consumer.
const (
	ConsumerHinted   = "hinted"
	ConsumerBlocking = "blocking"
)

const (
	FormatSwoole = "swoole"
	FormatRaw    = "raw"
	FormatJSON   = "json"
)

// ConfigError is a Config field that New refuses: which field, its value,
// and what is accepted. It wraps ErrBadConfig. The command line maps Field
// to its flag.
type ConfigError struct {
	Field string // e.g. "Workers"
	Value string // as given, e.g. "-5"
	Want  string // what is accepted, e.g. "0 for the default, or 1 to 100000"
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%v: %s: %s: want %s", ErrBadConfig, e.Field, e.Value, e.Want)
}

func (e *ConfigError) Unwrap() error { return ErrBadConfig }

// Validate checks every field before anything is started or dialled; the
// first bad one is returned as a *ConfigError.
func (c Config) Validate() error {
	checks := []func() *ConfigError{
		func() *ConfigError { return checkAddr(c.Addr) },
		func() *ConfigError { return intRange("Workers", c.Workers, 1, 100_000) },
		func() *ConfigError { return intRange("MaxUsers", c.MaxUsers, 1, 1_000_000) },
		func() *ConfigError { return intRange("MaxMessage", c.MaxMessage, 16, 64<<20) },
		func() *ConfigError { return intRange("MaxPendingBytes", c.MaxPendingBytes, 64<<10, 64<<30) },
		func() *ConfigError { return intRange("MaxQueuedBytes", c.MaxQueuedBytes, 4<<10, 1<<30) },
		func() *ConfigError { return intRange("Batch", c.Batch, 1, 10_000) },
		func() *ConfigError { return intRange("MaxConnsPerUser", c.MaxConnsPerUser, 1, 100_000) },
		func() *ConfigError { return intRange("MaxMessageRate", c.MaxMessageRate, 1, 1_000_000) },
		func() *ConfigError { return durRange("InstanceTTL", c.InstanceTTL, time.Second, 24*time.Hour) },
		func() *ConfigError {
			return durRange("HandshakeTimeout", c.HandshakeTimeout, 100*time.Millisecond, 5*time.Minute)
		},
		func() *ConfigError { return durRange("IdleTimeout", c.IdleTimeout, 100*time.Millisecond, 24*time.Hour) },
		func() *ConfigError {
			return durRange("WriteTimeout", c.WriteTimeout, 100*time.Millisecond, 10*time.Minute)
		},
		func() *ConfigError {
			return durRange("ShutdownTimeout", c.ShutdownTimeout, 100*time.Millisecond, time.Hour)
		},
		func() *ConfigError { return durRange("AckTimeout", c.AckTimeout, 100*time.Millisecond, 24*time.Hour) },
		func() *ConfigError { return intRange("AckWindow", c.AckWindow, 1, 100_000) },
		c.checkNames,
		c.checkOrigins,
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) checkNames() *ConfigError {
	switch c.Format {
	case "", FormatSwoole, FormatRaw, FormatJSON:
	default:
		return &ConfigError{"Format", fmt.Sprintf("%q", c.Format), "swoole, raw or json"}
	}
	switch c.Consumer {
	case "", ConsumerHinted, ConsumerBlocking:
	default:
		return &ConfigError{"Consumer", fmt.Sprintf("%q", c.Consumer), "hinted or blocking"}
	}
	if c.KeyPattern != "" && redisq.CheckKeyPattern(c.KeyPattern) != nil {
		return &ConfigError{"KeyPattern", fmt.Sprintf("%q", c.KeyPattern), "exactly one %s and no braces, e.g. user_%s_messages"}
	}
	if c.Instance != "" && !redisq.ValidID(c.Instance) {
		return &ConfigError{"Instance", fmt.Sprintf("%q", c.Instance), "1-128 characters of [A-Za-z0-9_.:-]"}
	}
	return nil
}

// checkOrigins accepts what a browser sends as Origin: scheme://host[:port],
// nothing after it. A path or a missing scheme would never match, so the
// mistake would show only as every browser getting 403.
func (c Config) checkOrigins() *ConfigError {
	for _, o := range c.AllowedOrigins {
		if _, ok := canonicalOrigin(o); !ok {
			return &ConfigError{"AllowedOrigins", fmt.Sprintf("%q", o), "scheme://host[:port] such as https://app.example (no wildcard, a port 1 to 65535)"}
		}
	}
	return nil
}

// canonicalOrigin is an origin as a browser sends it (RFC 6454 §6.1):
// scheme and host in lower case, no default port. ok is false for what is
// not scheme://host[:port], or holds a wildcard or a bad port.
func canonicalOrigin(o string) (string, bool) {
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil || u.Path != "" ||
		u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || strings.Contains(u.Host, "*") {
		return "", false
	}
	scheme, host, port := strings.ToLower(u.Scheme), strings.ToLower(u.Hostname()), u.Port()
	if port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", false
		}
	}
	if scheme == "http" && port == "80" || scheme == "https" && port == "443" {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, true
}

func checkAddr(addr string) *ConfigError {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return &ConfigError{"Addr", fmt.Sprintf("%q", addr), "host:port with a port 0 to 65535, such as 0.0.0.0:9502, :9502 or [::1]:9502"}
	}
	return nil
}

// intRange accepts 0 (the default) or lo..hi.
func intRange[T int | int64](field string, v, lo, hi T) *ConfigError {
	if v == 0 || lo <= v && v <= hi {
		return nil
	}
	return &ConfigError{field, fmt.Sprint(v), fmt.Sprintf("0 for the default, or %d to %d", lo, hi)}
}

// durRange accepts 0 (the default) or lo..hi.
func durRange(field string, v, lo, hi time.Duration) *ConfigError {
	if v == 0 || lo <= v && v <= hi {
		return nil
	}
	return &ConfigError{field, v.String(), fmt.Sprintf("0 for the default, or %s to %s", shortDur(lo), shortDur(hi))}
}

// shortDur writes 24h, not 24h0m0s.
func shortDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// defaultBounds fills in Workers and MaxUsers, where they were not given,
// for c.Consumer.
func (c *Config) defaultBounds() {
	if !c.workersSet {
		c.Workers = DefaultWorkers(c.Consumer)
	}
	if !c.maxUsersSet {
		c.MaxUsers = DefaultMaxUsers(c.Consumer)
	}
}

// usersBound is how many users may be online at once: MaxUsers, and,
// blocking, at most one per task.
func (c Config) usersBound() int {
	if c.Consumer == ConsumerBlocking {
		return min(c.MaxUsers, c.Workers)
	}
	return c.MaxUsers
}

// withDefaults validates c and fills in the defaults of its zero fields.
func (c Config) withDefaults() (Config, error) {
	if err := c.Validate(); err != nil {
		return c, err
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Addr == "" {
		c.Addr = "0.0.0.0:9502"
	}
	if c.Format == "" {
		c.Format = FormatSwoole
	}
	if c.Consumer == "" {
		c.Consumer = ConsumerHinted
	}
	c.workersSet, c.maxUsersSet = c.Workers != 0, c.MaxUsers != 0
	c.defaultBounds()
	if c.Instance == "" {
		c.slotted = c.ReusePort
		c.Instance = DefaultInstance(c.Addr)
	}
	if c.MaxQueuedBytes == 0 {
		c.MaxQueuedBytes = 1 << 20
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = 256 << 20
	}
	if c.MaxMessage == 0 {
		c.MaxMessage = 64 << 10
	}
	// Compared as browsers send them, each handshake canonicalising only
	// its own Origin (Validate refused any that has no canonical form).
	origins := make([]string, len(c.AllowedOrigins))
	for i, o := range c.AllowedOrigins {
		origins[i], _ = canonicalOrigin(o)
	}
	c.AllowedOrigins = origins
	if c.MaxConnsPerUser == 0 {
		c.MaxConnsPerUser = 16
	}
	if c.MaxMessageRate == 0 {
		c.MaxMessageRate = 1000
	}
	def(&c.HandshakeTimeout, 5*time.Second)
	def(&c.IdleTimeout, 60*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.ShutdownTimeout, 10*time.Second)
	def(&c.AckTimeout, 30*time.Second)
	if c.AckWindow == 0 {
		c.AckWindow = 256
	}
	def(&c.InstanceTTL, 30*time.Second)
	if c.PresenceChannel == "" {
		c.PresenceChannel = DefaultPresenceChannel
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// DefaultPresenceChannel is Config.PresenceChannel's default; PresenceOff
// turns presence events off.
const (
	DefaultPresenceChannel = "redpush:presence"
	PresenceOff            = "off"
)

// DefaultInstance derives a stable id from the host name and the port of
// addr, so that a restarted instance finds its own processing lists again.
func DefaultInstance(addr string) string {
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
