package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
	"github.com/redpush/redpush/server"
)

func TestTLSServesWSSAndHTTPS(t *testing.T) {
	rds := testutil.StartRedis(t)
	clients, err := redisq.Dial(context.Background(), rds.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Close()
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	srv, err := server.New(server.Config{Addr: addr, Instance: "tls", Format: server.FormatRaw,
		TLS: &tls.Config{Certificates: []tls.Certificate{testutil.SelfSignedCert(t, 1)}}}, clients)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	insecure := &tls.Config{InsecureSkipVerify: true} // the test's own self-signed certificate
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: insecure}}
	testutil.Eventually(t, 5*time.Second, func() error {
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	conn, _, _, err := ws.Dialer{TLSConfig: insecure}.Dial(dctx, "wss://"+addr+"/?user_id=s")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if m, _, err := wsutil.ReadServerData(conn); err != nil || string(m) != "hello;\n" {
		t.Fatalf("greeting over wss: %q %v", m, err)
	}
	rds.Client().LPush(ctx, "user_s_messages", "secret")
	if m, _, err := wsutil.ReadServerData(conn); err != nil || string(m) != "secret" {
		t.Fatalf("push over wss: %q %v", m, err)
	}
}
