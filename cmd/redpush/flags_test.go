package main

import (
	"strings"
	"testing"
)

// The quick start lets anyone push to any user (POST /demo/push): with
// -redis embedded it listens on loopback unless an address is given.
func TestEmbeddedListensOnLoopbackUnlessAddrIsGiven(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"embedded", []string{"-redis", "embedded"}, nil, "127.0.0.1:9502"},
		{"embedded from env", nil, map[string]string{"REDPUSH_REDIS": "embedded"}, "127.0.0.1:9502"},
		{"embedded with -addr", []string{"-redis", "embedded", "-addr", "0.0.0.0:9502"}, nil, "0.0.0.0:9502"},
		{"embedded with REDPUSH_ADDR", []string{"-redis", "embedded"}, map[string]string{"REDPUSH_ADDR": ":9600"}, ":9600"},
		{"real redis", nil, nil, "0.0.0.0:9502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, func(k string) string { return tc.env[k] }, &strings.Builder{})
			if err != nil {
				t.Fatal(err)
			}
			if o.cfg.Addr != tc.want {
				t.Fatalf("addr %q, want %q", o.cfg.Addr, tc.want)
			}
			if o.redis != "embedded" {
				return
			}
			if note := o.embeddedNote(); tc.want == "127.0.0.1:9502" != strings.Contains(note, "loopback only") {
				t.Fatalf("start note %q does not say whether it listens on loopback only", note)
			}
		})
	}
}

// The healthcheck asks over loopback a server that listens on every address.
func TestReadyURL(t *testing.T) {
	for _, tc := range []struct {
		addr, cert, want string
	}{
		{"0.0.0.0:9502", "", "http://127.0.0.1:9502/readyz"},
		{":9600", "", "http://127.0.0.1:9600/readyz"},
		{"[::]:9502", "c.pem", "https://[::1]:9502/readyz"},
		{"10.0.0.5:9502", "", "http://10.0.0.5:9502/readyz"},
	} {
		o := &options{tlsCert: tc.cert}
		o.cfg.Addr = tc.addr
		if got := readyURL(o); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.addr, got, tc.want)
		}
	}
}
