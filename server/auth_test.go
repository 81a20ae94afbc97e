package server_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

const secret = "0123456789abcdef-test-secret"

func hs256(t *testing.T, key []byte, claims jwt.RegisteredClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestSignedIdentities(t *testing.T) {
	auth, err := server.NewHMACAuth([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, nil, server.Config{Auth: auth, Format: server.FormatRaw})
	now := time.Now()
	valid := jwt.RegisteredClaims{Subject: "a", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, valid).SignedString(jwt.UnsafeAllowNoneSignatureType)
	for _, tc := range []struct{ name, path, reason string }{
		{"missing token", "/", "token required"},
		{"bare user_id", "/?user_id=a", "token required"},
		{"expired", "/?token=" + hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "a", ExpiresAt: jwt.NewNumericDate(now.Add(-time.Minute))}), "expired"},
		{"not yet valid", "/?token=" + hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "a", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), NotBefore: jwt.NewNumericDate(now.Add(time.Minute))}), "not valid yet"},
		{"no expiry", "/?token=" + hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "a"}), "invalid token"},
		{"wrong signature", "/?token=" + hs256(t, []byte("another-secret-of-16-bytes"), valid), "invalid token"},
		{"alg none", "/?token=" + none, "invalid token"},
		{"garbage", "/?token=abc.def.ghi", "invalid token"},
		{"bad subject", "/?token=" + hs256(t, []byte(secret), jwt.RegisteredClaims{Subject: "a b", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}), "subject"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawUpgrade(t, g.addr, tc.path)
			if status != 401 || !strings.Contains(body, tc.reason) || strings.Count(strings.TrimSpace(body), "\n") != 0 {
				t.Fatalf("got %d %q, want 401 with a one-line reason containing %q", status, body, tc.reason)
			}
		})
	}
	// A token for a, with user_id=b in the URL, reads a's queue only.
	c, err := testutil.TryDial(g.addr, "/?user_id=b&token="+hs256(t, []byte(secret), valid))
	if err != nil {
		t.Fatal(err)
	}
	cl := testutil.NewClient(t, c)
	if got := cl.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q", got)
	}
	g.push("b", "for b")
	g.push("a", "for a")
	if got := cl.MustRead(); got != "for a" {
		t.Fatalf("token for a read %q", got)
	}
	if n, _ := g.rc.LLen(t.Context(), "user_b_messages").Result(); n != 1 {
		t.Fatal("b's message was consumed by a's token")
	}
	if s := g.srv.Snapshot(); s.Refused401 != 9 {
		t.Fatalf("snapshot %+v, want 9 refusals with 401", s)
	}
}

func TestES256PublicKey(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	auth, err := server.NewPublicKeyAuth(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, nil, server.Config{Auth: auth})
	claims := jwt.RegisteredClaims{Subject: "es", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodES256, claims).SignedString(priv)
	if _, err := testutil.TryDial(g.addr, "/?token="+tok); err != nil {
		t.Fatalf("valid ES256 token refused: %v", err)
	}
	// An HS256 token keyed with the public key bytes (algorithm confusion).
	if status, _ := rawUpgrade(t, g.addr, "/?token="+hs256(t, der, claims)); status != 401 {
		t.Fatalf("HS256 token against an ES256 key: %d, want 401", status)
	}
}

func TestAllowedOrigins(t *testing.T) {
	g := startGateway(t, nil, server.Config{AllowedOrigins: []string{"https://app.example"}})
	for origin, want := range map[string]int{"https://app.example": 101, "https://evil.example": 403} {
		if got, body := rawUpgrade(t, g.addr, "/?user_id=1", "Origin: "+origin); got != want {
			t.Errorf("Origin %s: %d %q, want %d", origin, got, body, want)
		}
	}
	g.dialReady("no-origin") // non-browser clients send none
}

// Allowed origins compare as browsers send them: scheme and host in lower
// case, no default port; a wildcard or a bad port is refused at start.
func TestOriginsCompareAsBrowsersSendThem(t *testing.T) {
	g := startGateway(t, nil, server.Config{AllowedOrigins: []string{"HTTPS://App.Example:443", "http://localhost:8080"}})
	for origin, want := range map[string]int{
		"https://app.example":     101,
		"http://localhost:8080":   101,
		"https://app.example:444": 403,
		"https://evil.example":    403,
	} {
		if got := upgradeWithOrigin(t, g.addr, origin); got != want {
			t.Errorf("Origin %s: %d, want %d", origin, got, want)
		}
	}
	for _, bad := range []string{"https://*.example.com", "https://app.example:99999", "https://app.example:0"} {
		if err := (server.Config{AllowedOrigins: []string{bad}}).Validate(); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// upgradeWithOrigin sends a WebSocket handshake with an Origin header and
// returns the HTTP status of the answer.
func upgradeWithOrigin(t *testing.T, addr, origin string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /?user_id=o HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: %s\r\n\r\n", addr, origin)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// RS256: an RSA public key verifies RS256 tokens and nothing else; exp and
// nbf are checked with 5 s of leeway, no more.
func TestRS256PublicKeyAndLeeway(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	auth, err := server.NewPublicKeyAuth(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, nil, server.Config{Auth: auth, Format: server.FormatRaw})
	rs256 := func(c jwt.RegisteredClaims) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, c).SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	at := func(d time.Duration) *jwt.NumericDate { return jwt.NewNumericDate(now.Add(d)) }
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	es, _ := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour)}).SignedString(ecKey)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour)}).SignedString(other)
	for _, tc := range []struct {
		name, token string
		status      int
		reason      string
	}{
		{"valid", rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour)}), 101, ""},
		// Leeway: 5 s either way; the tokens sit 2 s inside or outside it.
		{"expired 3 s ago", rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(-3 * time.Second)}), 101, ""},
		{"expired 8 s ago", rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(-8 * time.Second)}), 401, "expired"},
		{"valid from 3 s ahead", rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour), NotBefore: at(3 * time.Second)}), 101, ""},
		{"valid from 8 s ahead", rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour), NotBefore: at(8 * time.Second)}), 401, "not valid yet"},
		{"no exp", rs256(jwt.RegisteredClaims{Subject: "rs"}), 401, "invalid token"},
		{"another RSA key", forged, 401, "invalid token"},
		{"ES256", es, 401, "invalid token"},
		{"HS256 keyed with the public key", hs256(t, der, jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour)}), 401, "invalid token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawUpgrade(t, g.addr, "/?token="+tc.token)
			if status != tc.status || !strings.Contains(body, tc.reason) {
				t.Fatalf("got %d %q, want %d %q", status, body, tc.status, tc.reason)
			}
		})
	}
	// The valid token reads rs's queue.
	c, err := testutil.TryDial(g.addr, "/?token="+rs256(jwt.RegisteredClaims{Subject: "rs", ExpiresAt: at(time.Hour)}))
	if err != nil {
		t.Fatal(err)
	}
	cl := testutil.NewClient(t, c)
	cl.MustRead()
	g.push("rs", "signed with RSA")
	if got := cl.MustRead(); got != "signed with RSA" {
		t.Fatalf("got %q", got)
	}
}
