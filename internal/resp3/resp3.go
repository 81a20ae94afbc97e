package resp3

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Error is an error reply ("-…" or "!…").
type Error string

func (e Error) Error() string { return string(e) }

// Push is an out-of-band frame (">"): its kind ("invalidate", "message", …)
// and the values after it.
type Push struct {
	Kind string
	Vals []any
}

// ErrProtocol is returned for input that is not RESP3.
var ErrProtocol = errors.New("resp3: protocol error")

// AppendCommand appends args as one command (an array of bulk strings).
func AppendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// Reader reads values from a RESP3 stream.
type Reader struct{ r *bufio.Reader }

// NewReader reads from r, which it buffers.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 32<<10)} }

// Read returns the next value: string (simple, bulk, verbatim, double, big
// number), int64, bool, nil (null), []any (array, set; a map as its keys
// and values in turn), Error, or Push. Attributes are skipped.
func (r *Reader) Read() (any, error) {
	l, err := r.line()
	if err != nil {
		return nil, err
	}
	t, body := l[0], string(l[1:])
	switch t {
	case '+', ',', '(':
		return body, nil
	case '-':
		return Error(body), nil
	case '!':
		s, err := r.bulk(body)
		if err != nil {
			return nil, err
		}
		str, _ := s.(string)
		return Error(str), nil
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: integer %q", ErrProtocol, body)
		}
		return n, nil
	case '#':
		return body == "t", nil
	case '_':
		return nil, nil
	case '$', '=':
		return r.bulk(body)
	case '*', '~', '>', '%', '|':
		return r.aggregate(t, body)
	}
	return nil, fmt.Errorf("%w: type %q", ErrProtocol, t)
}

func (r *Reader) aggregate(t byte, body string) (any, error) {
	n, err := strconv.Atoi(body)
	if err != nil {
		return nil, fmt.Errorf("%w: length %q", ErrProtocol, body)
	}
	if n < 0 {
		return nil, nil
	}
	if t == '%' || t == '|' {
		n *= 2
	}
	vals := make([]any, n)
	for i := range vals {
		if vals[i], err = r.Read(); err != nil {
			return nil, err
		}
	}
	switch t {
	case '|': // an attribute describes the value that follows: skip it
		return r.Read()
	case '>':
		if len(vals) == 0 {
			return nil, fmt.Errorf("%w: empty push", ErrProtocol)
		}
		kind, _ := vals[0].(string)
		return Push{Kind: kind, Vals: vals[1:]}, nil
	}
	return vals, nil
}

func (r *Reader) line() ([]byte, error) {
	l, err := r.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line too long", ErrProtocol)
		}
		return nil, err
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return nil, fmt.Errorf("%w: bad line", ErrProtocol)
	}
	return l[:len(l)-2], nil
}

func (r *Reader) bulk(body string) (any, error) {
	n, err := strconv.Atoi(body)
	if err != nil {
		return nil, fmt.Errorf("%w: length %q", ErrProtocol, body)
	}
	if n < 0 {
		return nil, nil
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r.r, buf); err != nil {
		return nil, err
	}
	if buf[n] != '\r' || buf[n+1] != '\n' {
		return nil, fmt.Errorf("%w: bulk not terminated", ErrProtocol)
	}
	return string(buf[:n]), nil
}
