package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Server. The zero value is usable: 0 means the default,
// never "unlimited".
type Config struct {
	// Addr is where Run listens. Default "0.0.0.0:9502", as the original.
	Addr string
	// Workers is how many users can be consumed at once (Swoole's
	// task_worker_num). Default taskpool.DefaultSize().
	Workers int
	// KeyPattern maps a user id to its queue. Default "user_%s_messages".
	KeyPattern string
	// Format of a pushed frame: "swoole" (default), "raw" or "json".
	Format string
	// Instance is this process's stable id. Default "redpush".
	Instance string
	// InstanceTTL is how long this instance's heartbeat lives in Redis; it
	// is renewed every third of it. Another instance that finds the
	// heartbeat of an instance gone returns that instance's in-flight
	// messages to their queues. Default 30 s.
	InstanceTTL time.Duration
	// MaxMessage is the largest client frame or message, in bytes; larger
	// gets close 1009. Default 64 KiB.
	MaxMessage int
	// HandshakeTimeout bounds reading the request and writing the upgrade
	// response. Default 5 s.
	HandshakeTimeout time.Duration
	// IdleTimeout: a client silent for half of it is pinged, silent for all
	// of it is closed. Default 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to a client; a client that does not
	// read for that long is disconnected. Default 10 s.
	WriteTimeout time.Duration
	// ShutdownTimeout bounds the ordered shutdown. Default 10 s.
	ShutdownTimeout time.Duration
	// Batch is the most messages popped in one Redis round trip. Default 128.
	Batch int
	// DemoPush enables POST /demo/push, which LPUSHes for any user. Only for
	// the embedded quick start: it lets anyone write to any queue.
	DemoPush bool
	// Auth, when set, requires every client to present a signed token
	// (?token=<JWT>) whose subject is its user id; ?user_id= is then
	// ignored. Default nil: ?user_id= is believed, as by the original.
	Auth *Auth
	// AllowedOrigins, when not empty, refuses browsers whose Origin header is
	// not in the list with 403. Clients that send no Origin (not browsers)
	// are not affected. Default empty: any origin.
	AllowedOrigins []string
	// APIKey, when set, enables POST /api/push, authenticated with
	// "Authorization: Bearer <APIKey>". Default empty: no push API.
	APIKey string
	// TLS, when set, makes Run serve wss:// and https:// directly.
	TLS *tls.Config
	// Logger receives the structured log. Default slog.Default().
	Logger *slog.Logger
}

const (
	FormatSwoole = "swoole"
	FormatRaw    = "raw"
	FormatJSON   = "json"
)

func (c Config) withDefaults() (Config, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Addr == "" {
		c.Addr = "0.0.0.0:9502"
	}
	if c.Format == "" {
		c.Format = FormatSwoole
	}
	switch c.Format {
	case FormatSwoole, FormatRaw, FormatJSON:
	default:
		return c, fmt.Errorf("%w: format %q is not swoole, raw or json", ErrBadConfig, c.Format)
	}
	if c.Instance == "" {
		c.Instance = "redpush"
	}
	if c.MaxMessage <= 0 {
		c.MaxMessage = 64 << 10
	}
	def(&c.HandshakeTimeout, 5*time.Second)
	def(&c.IdleTimeout, 60*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.ShutdownTimeout, 10*time.Second)
	def(&c.InstanceTTL, 30*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}
