package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/gobwas/ws"
)

// stamp is what a payload carries: whose it is, its place in the user's
// sequence, when it was scheduled to be pushed (unix nanos) and how late
// its producer actually pushed it (µs; 0 outside -rate mode).
type stamp struct {
	user      []byte
	seq       int64
	scheduled int64
	lagMicros int64
}

// maxSeq bounds the sequence numbers a frame may claim, so that a garbled
// frame cannot make the tracker allocate a huge bitset.
const maxSeq = 1 << 32

// makePayload builds "<user>|<seq>|<scheduled-nanos>|<lag-µs>|" padded with
// 'x' to size.
func makePayload(dst []byte, user string, seq, scheduled, lagMicros int64, size int) []byte {
	dst = append(dst[:0], user...)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, scheduled, 10)
	dst = append(dst, '|')
	dst = strconv.AppendInt(dst, lagMicros, 10)
	dst = append(dst, '|')
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

var errFrame = errors.New("frame does not carry a bench payload")

// swooleMarker ends the original's prefix "redis 的 <queue> 队列发送消息:".
var swooleMarker = []byte("队列发送消息:")

// parseFrame extracts the stamp from a pushed frame without allocating
// (except for json): the bench must not be what it measures.
func parseFrame(format string, frame []byte) (stamp, error) {
	p := frame
	switch format {
	case "swoole":
		i := bytes.Index(p, swooleMarker)
		if i < 0 {
			return stamp{}, errFrame
		}
		p = p[i+len(swooleMarker):]
	case "json":
		var v struct{ Data string }
		if json.Unmarshal(p, &v) != nil {
			return stamp{}, errFrame
		}
		p = []byte(v.Data)
	}
	return parsePayload(p)
}

// parsePayload reads a payload that makePayload built.
func parsePayload(p []byte) (stamp, error) {
	var s stamp
	var f [3][]byte
	var ok bool
	if s.user, p, ok = bytes.Cut(p, sep); !ok {
		return stamp{}, errFrame
	}
	for i := range f {
		if f[i], p, ok = bytes.Cut(p, sep); !ok {
			return stamp{}, errFrame
		}
	}
	var ok1, ok2, ok3 bool
	s.seq, ok1 = atoi(f[0])
	s.scheduled, ok2 = atoi(f[1])
	s.lagMicros, ok3 = atoi(f[2])
	if !ok1 || !ok2 || !ok3 || s.seq >= maxSeq {
		return stamp{}, errFrame
	}
	return s, nil
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

// parseAckFrame reads a pushed frame of acknowledged delivery,
// {"id":"…","data":"…"} with ,"redelivered":true when sent before. The
// bench's payloads are plain ASCII, so data needs no unescaping; anything
// else goes through encoding/json.
func parseAckFrame(p []byte) (id, data []byte, redelivered, ok bool) {
	rest, found := bytes.CutPrefix(p, []byte(`{"id":"`))
	if found {
		var more []byte
		id, more, found = bytes.Cut(rest, []byte(`","data":"`))
		if found {
			data, more, found = bytes.Cut(more, []byte(`"`))
			tail := string(more)
			if found && bytes.IndexByte(data, '\\') < 0 && (tail == "}" || tail == `,"redelivered":true}`) {
				return id, data, tail != "}", true
			}
		}
	}
	var v struct {
		ID          string `json:"id"`
		Data        string `json:"data"`
		Redelivered bool   `json:"redelivered"`
	}
	if json.Unmarshal(p, &v) != nil || v.ID == "" {
		return nil, nil, false, false
	}
	return []byte(v.ID), []byte(v.Data), v.Redelivered, true
}

// ackFrame is the client's acknowledgement of id, {"ack":"<id>"}, masked
// when written (ws.MaskFrameInPlace).
func ackFrame(id []byte) ws.Frame {
	return ws.NewTextFrame(append(append([]byte(`{"ack":"`), id...), `"}`...))
}
