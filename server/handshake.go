package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/taskpool"
)

// maxHead is the largest request head accepted, request line and headers.
const maxHead = 4096

var headPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, maxHead) }}

var errHeadTooLarge = errors.New("request head larger than 4 KiB")

// handle serves one accepted socket: it reads the request head under the
// handshake deadline and routes it to the WebSocket path or the HTTP side.
func (s *Server) handle(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	br := headPool.Get().(*bufio.Reader)
	br.Reset(nc)
	upgrade, err := readHead(br)
	if err != nil {
		// Garbage that never ends a head, or a slow client: there is no
		// request to answer. Closing frees the goroutine.
		s.log.Debug("handshake failed", "remote", nc.RemoteAddr(), "err", err)
		if errors.Is(err, errHeadTooLarge) {
			_, _ = io.WriteString(nc, "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		}
		headPool.Put(br)
		_ = nc.Close()
		return
	}
	if !upgrade {
		_ = nc.SetDeadline(time.Time{}) // net/http sets its own
		s.httpLn.hand(&bufConn{Conn: nc, r: br})
		return
	}
	c, err := s.upgrade(nc, br)
	// The head buffer is not needed after the handshake; frames are read
	// through a small one, so an idle connection costs little memory.
	br.Reset(nil)
	headPool.Put(br)
	if err != nil {
		s.log.Debug("upgrade refused", "remote", nc.RemoteAddr(), "err", err)
		_ = nc.Close()
		return
	}
	s.serveConn(c)
}

// readHead buffers the request head and reports whether it asks for an
// upgrade. Nothing is consumed: gobwas/ws or net/http parse it again.
func readHead(br *bufio.Reader) (upgrade bool, err error) {
	for {
		head, _ := br.Peek(br.Buffered())
		if end := bytes.Index(head, []byte("\r\n\r\n")); end >= 0 {
			return hasUpgrade(head[:end]), nil
		}
		if br.Buffered() == maxHead {
			return false, errHeadTooLarge
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return false, err
		}
	}
}

// hasUpgrade reports whether the header lines hold an Upgrade header.
// Whether its value is right is for gobwas/ws to judge (and answer 400).
func hasUpgrade(head []byte) bool {
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		if len(line) >= 8 && bytes.EqualFold(line[:8], []byte("upgrade:")) {
			return true
		}
	}
	return false
}

// upgrade runs the gobwas/ws handshake on the buffered head and admits the
// user to the hub.
func (s *Server) upgrade(nc net.Conn, br *bufio.Reader) (*conn, error) {
	var id identity
	var sess *session
	u := s.upgrader(nc.RemoteAddr(), &id, func() (err error) {
		sess, err = s.hub.acquire(id.user)
		return err
	})
	_, err := u.Upgrade(struct {
		io.Reader
		io.Writer
	}{br, nc})
	if err != nil {
		if sess != nil {
			s.hub.release(sess, nil)
		}
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	c := &conn{fd: s.nextFD.Add(1), user: id.user, until: id.until, nc: nc, sess: sess, writeTimeout: s.cfg.WriteTimeout,
		maxQueued: s.cfg.MaxQueuedBytes, m: s.hub.m, stopBy: &s.hub.stopBy}
	if id.ack {
		c.ack = newAcker(s.cfg.AckWindow)
	}
	c.wire.init(nc)
	c.progressAt.Store(time.Now().UnixNano())
	return c, nil
}

// upgrader checks a handshake as it is parsed, writing into id who it is:
// the user id (or token) when the request line arrives (400 or 401, before
// any Redis call), the Origin among the headers (403), then admit, once the
// headers are valid (429 when the user holds too many connections, 503 when
// -max-users are online, blocking when the pool has no task for its
// consumer, or when a shutdown began). Each refusal is counted and logged.
func (s *Server) upgrader(remote net.Addr, id *identity, admit func() error) ws.Upgrader {
	reject := func(status int, reason string, header ws.HandshakeHeader) error {
		s.refuse(status, reason, remote)
		return ws.RejectConnectionError(ws.RejectionStatus(status), ws.RejectionHeader(header), ws.RejectionReason(reason+"\n"))
	}
	return ws.Upgrader{
		OnRequest: func(uri []byte) error {
			var status int
			var err error
			if *id, status, err = s.identify(string(uri)); err != nil {
				return reject(status, err.Error(), nil)
			}
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if strings.EqualFold(string(key), "Origin") && !s.originAllowed(string(value)) {
				return reject(403, originRefusal(string(value)), nil)
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			err := admit()
			switch {
			case errors.Is(err, errTooManyConns):
				return nil, reject(429, err.Error(), nil)
			case err != nil:
				return nil, reject(503, refusal(err), ws.HandshakeHeaderString("Retry-After: "+retryAfter()+"\r\n"))
			}
			return nil, nil
		},
	}
}

// originAllowed applies Config.AllowedOrigins to a browser's Origin.
func (s *Server) originAllowed(origin string) bool {
	if len(s.cfg.AllowedOrigins) == 0 {
		return true
	}
	o, ok := canonicalOrigin(origin)
	return ok && slices.Contains(s.cfg.AllowedOrigins, o) // canonical since withDefaults
}

func originRefusal(origin string) string {
	return fmt.Sprintf("origin %q not allowed (-allowed-origins)", origin)
}

// check is GET /check: the verdict a WebSocket handshake with the same
// query would get, without upgrading, admitting or counting it. A browser
// never shows the status or body of a refused upgrade, only close code
// 1006, so the demo page asks here why its connection failed. The origin
// is the Origin header, or the origin parameter: a same-origin GET carries
// no Origin.
func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	id, status, err := s.identify(r.URL.RequestURI())
	user := id.user
	origin := r.Header.Get("Origin")
	if origin == "" {
		origin = r.URL.Query().Get("origin")
	}
	switch {
	case err != nil:
	case origin != "" && !s.originAllowed(origin):
		status, err = http.StatusForbidden, errors.New(originRefusal(origin))
	default:
		if err = s.hub.admissible(user); errors.Is(err, errTooManyConns) {
			status = http.StatusTooManyRequests
		} else if err != nil {
			status, err = http.StatusServiceUnavailable, errors.New(refusal(err))
			w.Header().Set("Retry-After", retryAfter())
		}
	}
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	fmt.Fprintf(w, "ok: would connect as user %s\n", user)
}

// retryAfter is the Retry-After of a 503, in seconds: 1 to 10 at random,
// so that the clients a restart or a full pool turned away come back spread
// over ten seconds rather than all in the same one.
func retryAfter() string {
	return strconv.Itoa(1 + rand.IntN(10))
}

func refusal(err error) string {
	if errors.Is(err, taskpool.ErrClosed) {
		return "server is shutting down"
	}
	return "server is at capacity (-max-users); retry later"
}

// identify returns the user a request URI names: the subject of ?token=
// when Config.Auth is set (401 otherwise), else ?user_id= (400 when missing
// or invalid), and whether it asks for acknowledged delivery (?ack=1; 400
// for a value other than 0 or 1). The original accepts any path, so does
// this.
func (s *Server) identify(uri string) (id identity, status int, err error) {
	_, query, _ := strings.Cut(uri, "?")
	vals, err := url.ParseQuery(query)
	if err != nil {
		return id, 400, fmt.Errorf("bad query string: %v", err)
	}
	switch vals.Get("ack") {
	case "", "0":
	case "1":
		id.ack = true
	default:
		return id, 400, errors.New("bad ack: want ack=1 (acknowledged delivery) or ack=0")
	}
	if s.cfg.Auth != nil {
		if id.user, id.until, err = s.cfg.Auth.verify(vals.Get("token")); err != nil {
			return id, 401, err
		}
		return id, 0, nil
	}
	if id.user, err = userFromQuery(vals); err != nil {
		return id, 400, err
	}
	return id, 0, nil
}

// identity is who a handshake says it is: the user, and until when its
// token is valid (zero without authentication).
type identity struct {
	user  string
	until time.Time
	ack   bool // ?ack=1: acknowledged delivery
}

func userFromQuery(vals url.Values) (string, error) {
	user := vals.Get("user_id")
	if user == "" {
		return "", errors.New("missing user_id")
	}
	if !redisq.ValidID(user) {
		return "", errBadUserID
	}
	return user, nil
}

// serveConn runs an upgraded connection: greeting, registration, reading
// (by the reactor, or by this goroutine), then endConn.
func (s *Server) serveConn(c *conn) {
	if !s.openConn(c) {
		return
	}
	if s.rx != nil && s.rx.add(c) {
		return // the reactor reads it from now on, and ends it
	}
	br := bufio.NewReaderSize(c.nc, 256)
	err := s.readLoop(c, br)
	s.endConn(c, br, err)
}

// openConn greets c and registers it (false: it was refused, and is
// closed).
func (s *Server) openConn(c *conn) bool {
	// The greeting goes out before the connection is registered, so it is
	// the first frame even when messages are waiting.
	if err := c.write(s.greet.hello); err != nil {
		s.hub.release(c.sess, nil)
		c.close()
		return false
	}
	if err := s.hub.attach(c); err != nil {
		s.hub.release(c.sess, nil)
		code := ws.StatusGoingAway
		if errors.Is(err, errConsumerCrashed) {
			code = ws.StatusInternalServerError
		}
		c.closeWith(code, err.Error(), time.Now().Add(time.Second))
		c.close() // no reader to linger: this one never began
		// Its client read the greeting: the close gets its line too (a
		// shutdown that began between the greeting and the registration).
		s.log.Info(fmt.Sprintf("client-%d is closed", c.fd), "fd", c.fd, "user", c.user, "reason", c.closedBecause())
		return false
	}
	s.log.Debug("client open", "fd", c.fd, "user", c.user, "remote", c.nc.RemoteAddr())
	if !c.until.IsZero() {
		// The token stops being valid while the connection is open: the
		// connection ends with it, as a new handshake would be refused.
		c.expire = time.AfterFunc(time.Until(c.until), func() {
			c.closeWith(ws.StatusPolicyViolation, "token expired", time.Now().Add(time.Second))
		})
	}
	return true
}

// endConn ends c once its reading ended with err: it leaves the hub, then,
// if the server closed it, lingers (reading and dropping from r) so that
// the client can take what is on its way, and logs the original's close
// line.
func (s *Server) endConn(c *conn, r io.Reader, err error) {
	if c.expire != nil {
		c.expire.Stop()
	}
	s.hub.release(c.sess, c)
	if c.gone.Load() && !errors.Is(err, io.EOF) {
		c.linger(r) // the server ended it: let the client take what is on its way
	}
	c.close()
	s.log.Info(fmt.Sprintf("client-%d is closed", c.fd), "fd", c.fd, "user", c.user, "reason", closeReason(err, c))
}

// closeReason says why a connection ended: the reader's own close, or why
// the server closed the socket (shutdown, failed write), of which the
// reader's error is only the echo, or what the socket reported.
func closeReason(err error, c *conn) string {
	var ce *closeErr
	if errors.As(err, &ce) {
		return ce.String()
	}
	if why := c.closedBecause(); why != "" {
		return why
	}
	if errors.Is(err, io.EOF) {
		return "peer closed the socket"
	}
	return err.Error()
}
