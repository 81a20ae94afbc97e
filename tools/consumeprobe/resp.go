package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// A minimal RESP3 connection: go-redis v9 hands RESP3 push frames
// (invalidate) to its push processor only when it reads the reply of a
// command on that connection (and on PubSub receives); nothing reads an idle
// connection, so a hint would wait for the next command. The probe needs a
// reader that sees pushes and replies interleaved on one full-duplex
// connection, hence these ~150 lines.

type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

// push is a RESP3 out-of-band frame (">"): kind, then its values.
type push struct {
	kind string
	vals []any
}

type respError string

func (e respError) Error() string { return string(e) }

func dialRESP3(addr string) (*respConn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	rc := &respConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10)}
	if _, err := rc.do("HELLO", "3"); err != nil {
		c.Close()
		return nil, err
	}
	return rc, nil
}

// do sends one command and reads its reply (setup only: no pushes expected
// before tracking is on).
func (rc *respConn) do(args ...string) (any, error) {
	rc.write(args...)
	if err := rc.w.Flush(); err != nil {
		return nil, err
	}
	for {
		v, err := rc.read()
		if err != nil {
			return nil, err
		}
		if _, ok := v.(push); ok {
			continue
		}
		if e, ok := v.(respError); ok {
			return nil, e
		}
		return v, nil
	}
}

func (rc *respConn) write(args ...string) {
	w := rc.w
	w.WriteByte('*')
	w.WriteString(strconv.Itoa(len(args)))
	w.WriteString("\r\n")
	for _, a := range args {
		w.WriteByte('$')
		w.WriteString(strconv.Itoa(len(a)))
		w.WriteString("\r\n")
		w.WriteString(a)
		w.WriteString("\r\n")
	}
}

func (rc *respConn) line() ([]byte, error) {
	l, err := rc.r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return nil, errors.New("resp: bad line")
	}
	return l[:len(l)-2], nil
}

// read returns one value: string, int64, float string, nil, []any (arrays,
// sets, maps flattened), respError, or push.
func (rc *respConn) read() (any, error) {
	l, err := rc.line()
	if err != nil {
		return nil, err
	}
	t, body := l[0], string(l[1:])
	switch t {
	case '+', ',', '(':
		return body, nil
	case '-', '!':
		if t == '!' {
			s, err := rc.bulk(body)
			if err != nil {
				return nil, err
			}
			return respError(s.(string)), nil
		}
		return respError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '#':
		return body == "t", nil
	case '_':
		return nil, nil
	case '$', '=':
		return rc.bulk(body)
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		if t == '%' || t == '|' {
			n *= 2
		}
		vals := make([]any, n)
		for i := range vals {
			if vals[i], err = rc.read(); err != nil {
				return nil, err
			}
		}
		if t == '|' { // attribute: skip, the value follows
			return rc.read()
		}
		if t == '>' {
			kind, _ := vals[0].(string)
			return push{kind: kind, vals: vals[1:]}, nil
		}
		return vals, nil
	}
	return nil, fmt.Errorf("resp: unknown type %q", t)
}

func (rc *respConn) bulk(body string) (any, error) {
	n, err := strconv.Atoi(body)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, nil
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(rc.r, buf); err != nil {
		return nil, err
	}
	return string(buf[:n]), nil
}
