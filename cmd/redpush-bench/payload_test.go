package main

import (
	"testing"
	"time"
)

func TestPayloadRoundTripsThroughEveryFormat(t *testing.T) {
	now := time.Now().UnixNano()
	p := string(makePayload(nil, "42", 7, now, 1234, 100))
	if len(p) != 100 {
		t.Fatalf("payload is %d bytes, want 100", len(p))
	}
	for format, frame := range map[string]string{
		"raw":    p,
		"swoole": "redis 的 user_42_messages 队列发送消息:" + p,
		"json":   `{"user":"42","queue":"user_42_messages","data":"` + p + `"}`,
	} {
		s, err := parseFrame(format, []byte(frame))
		if err != nil || string(s.user) != "42" || s.seq != 7 || s.scheduled != now || s.lagMicros != 1234 {
			t.Errorf("%s: got %+v %v", format, s, err)
		}
	}
	for _, bad := range []string{"", "hello;\n", "hello", "42|x|1|0|", "42|1|1|", "42|1|1|1", "42|99999999999|1|0|"} {
		if _, err := parseFrame("raw", []byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestParseIPRange(t *testing.T) {
	ips, err := parseIPRange("127.0.0.2-127.0.0.4")
	if err != nil || len(ips) != 3 || ips[2].String() != "127.0.0.4" {
		t.Fatalf("got %v %v", ips, err)
	}
	for _, bad := range []string{"10.0.0.1-10.0.0.2", "127.0.0.5-127.0.0.2", "x"} {
		if _, err := parseIPRange(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestParseAckFrame(t *testing.T) {
	for _, tc := range []struct {
		frame, id, data string
		redelivered, ok bool
	}{
		{`{"id":"17","data":"1|2|3|0|xx"}`, "17", "1|2|3|0|xx", false, true},
		{`{"id":"17","data":"1|2|3|0|xx","redelivered":true}`, "17", "1|2|3|0|xx", true, true},
		{`{"id":"9","data":"a\"b"}`, "9", `a"b`, false, true}, // escaped: through encoding/json
		{`{"id":"9","data_b64":"//4="}`, "9", "", false, true},
		{`hello;`, "", "", false, false},
		{`{"event":"hello"}`, "", "", false, false},
	} {
		id, data, re, ok := parseAckFrame([]byte(tc.frame))
		if string(id) != tc.id || string(data) != tc.data || re != tc.redelivered || ok != tc.ok {
			t.Errorf("%s: got %q %q %v %v", tc.frame, id, data, re, ok)
		}
	}
}
