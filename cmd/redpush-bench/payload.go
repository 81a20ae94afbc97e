package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// makePayload builds "<user>|<seq>|<nanos>|" padded with 'x' to size.
func makePayload(dst []byte, user string, seq int64, nanos int64, size int) []byte {
	dst = append(dst[:0], user...)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, nanos, 10)
	dst = append(dst, '|')
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

var errFrame = errors.New("frame does not carry a bench payload")

// swooleMarker ends the original's prefix "redis 的 <queue> 队列发送消息:".
var swooleMarker = []byte("队列发送消息:")

// parseFrame extracts user, seq and send time from a pushed frame without
// allocating (except for json): the bench must not be what it measures.
func parseFrame(format string, frame []byte) (user []byte, seq, nanos int64, err error) {
	p := frame
	switch format {
	case "swoole":
		i := bytes.Index(p, swooleMarker)
		if i < 0 {
			return nil, 0, 0, errFrame
		}
		p = p[i+len(swooleMarker):]
	case "json":
		var v struct{ Data string }
		if json.Unmarshal(p, &v) != nil {
			return nil, 0, 0, errFrame
		}
		p = []byte(v.Data)
	}
	user, p, ok1 := bytes.Cut(p, sep)
	seqB, p, ok2 := bytes.Cut(p, sep)
	nanoB, _, ok3 := bytes.Cut(p, sep)
	if !ok1 || !ok2 || !ok3 {
		return nil, 0, 0, errFrame
	}
	seq, ok1 = atoi(seqB)
	nanos, ok2 = atoi(nanoB)
	if !ok1 || !ok2 {
		return nil, 0, 0, errFrame
	}
	return user, seq, nanos, nil
}

var sep = []byte("|")

func atoi(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 { // unix nanos have 19 digits until 2286
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
