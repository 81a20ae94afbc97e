package server_test

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/server"
)

// The -redis URL forms besides redis://, each against a real redis-server
// listening that way: the gateway's connections are found there (CLIENT
// LIST's laddr), and a message pushed through the plain port arrives.

func TestRedisOverAUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	rds := testutil.StartRedis(t, "--unixsocket", sock, "--unixsocketperm", "700")
	for _, mode := range []string{server.ConsumerHinted, server.ConsumerBlocking} {
		t.Run(mode, func(t *testing.T) {
			g := startGatewayAt(t, "unix://"+sock, rds.Client(), server.Config{Format: server.FormatRaw, Consumer: mode})
			g.rds = rds
			servedThrough(t, g, "laddr="+sock+":0 ", mode)
		})
	}
}

func TestRedisOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert := testutil.SelfSignedCert(t, 1)
	certFile, keyFile := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	kder, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	must(t, err)
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600))
	tlsPort := testutil.FreePort(t)
	// The plain port stays for the test's producer; the TLS port speaks
	// nothing but TLS.
	rds := testutil.StartRedis(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-auth-clients", "no")
	// The certificate is the test's own: skip_verify (go-redis's option).
	url := fmt.Sprintf("rediss://127.0.0.1:%d?skip_verify=true", tlsPort)
	for _, mode := range []string{server.ConsumerHinted, server.ConsumerBlocking} {
		t.Run(mode, func(t *testing.T) {
			g := startGatewayAt(t, url, rds.Client(), server.Config{Format: server.FormatRaw, Consumer: mode})
			g.rds = rds
			servedThrough(t, g, fmt.Sprintf("laddr=127.0.0.1:%d ", tlsPort), mode)
		})
	}
}

// servedThrough checks that the gateway's Redis connections (its command
// connection and a consumer's, or the hint connection) are the ones CLIENT
// LIST shows with laddr, and that a user is served through them.
func servedThrough(t *testing.T, g *gateway, laddr, mode string) {
	t.Helper()
	c := g.dialReady("u")
	g.awaitConsumers(1, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, func() error {
		list := g.rc.ClientList(t.Context()).Val()
		var through, blocked, hints int
		for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
			if strings.Contains(l, laddr) {
				through++
				if strings.Contains(l, "cmd=blmove") {
					blocked++
				}
				if strings.Contains(l, "name=redpush-hints-") && strings.Contains(l, "resp=3") {
					hints++
				}
			} else if !strings.Contains(l, "laddr="+g.rds.Addr()+" ") { // the test's own client
				return fmt.Errorf("a connection not through %q:\n%s", laddr, l)
			}
		}
		switch {
		case mode == server.ConsumerBlocking && (through < 2 || blocked != 1 || hints != 0):
			return fmt.Errorf("%d connections through %q, %d of them blocked in BLMOVE, %d hint connections; want the command client's and a blocked consumer's:\n%s", through, laddr, blocked, hints, list)
		case mode == server.ConsumerHinted && (through < 2 || blocked != 0 || hints != 1):
			return fmt.Errorf("%d connections through %q, %d of them blocked in BLMOVE, %d hint connections; want the command client's and one hint connection:\n%s", through, laddr, blocked, hints, list)
		}
		return nil
	})
	g.push("u", "through "+laddr)
	if got := c.MustRead(); got != "through "+laddr {
		t.Fatalf("got %q", got)
	}
}
