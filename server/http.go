package server

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redpush/redpush/html"
	"github.com/redpush/redpush/redisq"
)

// The HTTP side shares the WebSocket port, as with the original, where the
// demo page is usually served next to the socket. The accept loop keeps
// ownership of every socket and hands plain requests to a net/http server
// through connListener, so routing, keep-alive and HEAD stay net/http's job.

// connListener is a net.Listener fed by hand.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) hand(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *connListener) Addr() net.Addr { return l.addr }

// bufConn replays the request head that readHead buffered.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (s *Server) newHTTPServer() *http.Server {
	mux := http.NewServeMux()
	page := html.Page(html.Options{DemoPush: s.cfg.DemoPush, Auth: s.cfg.Auth != nil, DefaultUser: DemoUser})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.HandleFunc("GET /redpush.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		_, _ = w.Write(html.Client)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /check", s.check)
	mux.Handle("GET /metrics", s.metricsHandler())
	if s.cfg.APIKey != "" {
		mux.HandleFunc("POST /api/push", s.apiPush)
		mux.HandleFunc("GET /api/presence", s.apiPresence)
		mux.HandleFunc("POST /api/presence", s.apiPresenceMany)
	}
	if s.cfg.DemoPush {
		mux.HandleFunc("POST /demo/push", s.demoPush)
	}
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		ReadTimeout:       s.cfg.HandshakeTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHead,
	}
}

// readyz reports whether Redis answers: without it nothing is delivered,
// though open connections stay open.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.stopping.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	if err := s.clients.Command.Ping(ctx).Err(); err != nil {
		http.Error(w, "redis unreachable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = fmt.Fprintln(w, "ready")
}

// demoPush LPUSHes form value data into the queue of form value user, like a
// producer would. Enabled only with the embedded Redis of the quick start.
func (s *Server) demoPush(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		http.Error(w, "the demo push takes requests from its own page only", http.StatusForbidden)
		return
	}
	if !literalHost(r.Host) {
		http.Error(w, "the demo push answers only at localhost or an IP address, not "+r.Host, http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxMessage))
	user, data := r.FormValue("user"), r.FormValue("data")
	if !redisq.ValidID(user) {
		http.Error(w, errBadUserID.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pushTimeout)
	defer cancel()
	if err := s.clients.Command.LPush(ctx, s.q.Key(user), data).Err(); err != nil {
		pushFailed(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// literalHost reports that host (a Host header) names this machine by an IP
// address or as localhost. A page of another site that rebinds its own DNS
// name to 127.0.0.1 (DNS rebinding) is same-origin with itself, so Origin
// alone does not stop it; its requests still carry its own name in Host.
func literalHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return net.ParseIP(host) != nil || host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// sameOrigin refuses a request another site's page made a browser send (a
// cross-site form post): a browser names the requesting page in Origin,
// and in Sec-Fetch-Site. Tools such as curl send neither and pass.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}
