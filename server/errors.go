package server

import "errors"

var (
	// ErrBadConfig is returned by New for an unusable Config.
	ErrBadConfig = errors.New("server: bad config")
	// ErrStart wraps what stops Run or Serve before it serves: the listen
	// address in use, Redis failing during recovery. The command exits 2.
	ErrStart = errors.New("server: cannot start")
	// ErrConnClosed is returned by writes to a connection that is closed.
	ErrConnClosed = errors.New("server: connection closed")
	// errShuttingDown and errConsumerCrashed are why a connection that was
	// upgraded could not be registered (close 1001 and 1011); the first
	// says what the shutdown's close says to every other client.
	errShuttingDown    = errors.New("server shutting down")
	errConsumerCrashed = errors.New("internal error: reconnect")
	// errTooManyConns is the reason for a 429 before the upgrade: the user
	// holds Config.MaxConnsPerUser connections here already.
	errTooManyConns = errors.New("this user has the most connections allowed (-max-conns-per-user); close one first")
	// errBadUserID is the reason for a 400 before the upgrade.
	errBadUserID = errors.New("user_id must be 1-128 characters of [A-Za-z0-9_.:-]")
)
