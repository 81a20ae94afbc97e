package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/redpush/redpush/internal/testutil"
)

// The quick start as the README tells it: start with -redis embedded, open
// the page with no query, run exactly the command the start log suggests,
// and the message shows on the page.
func TestQuickStartInChromium(t *testing.T) {
	p := startProc(t, nil, "-redis", "embedded")
	m := regexp.MustCompile(`try="(redis-cli -p \d+ LPUSH \S+ hi)"`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no try= hint in the start log:\n%s", p.stderr.String())
	}
	ctx := testutil.Browser(t, 60*time.Second)
	if err := chromedp.Do(ctx, chromedp.Navigate(p.url("/")), chromedp.WaitVisible(chromedp.CSS("#state.open"))); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-c", m[1]).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", m[1], err, out)
	}
	testutil.PageText(t, ctx, "#content", "user_42_messages 队列发送消息:hi", 15*time.Second)
	testutil.Screenshot(t, ctx, "quick-start.png")
}

// certFiles writes a self-signed certificate with serial into cert.pem and
// key.pem under dir.
func certFiles(t *testing.T, dir string, serial int64) (certPath, keyPath string) {
	t.Helper()
	cert := testutil.SelfSignedCert(t, serial)
	der, key := cert.Certificate[0], cert.PrivateKey.(*ecdsa.PrivateKey)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return certPath, keyPath
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// serialOf opens a new TLS connection to addr and returns the serial number
// of the certificate the server presents.
func serialOf(t *testing.T, addr string) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// SIGHUP reloads the certificate and key files: new connections get the
// new certificate, open ones stay open; a bad file keeps the old one.
func TestSIGHUPReloadsTheTLSCertificate(t *testing.T) {
	rds := testutil.StartRedis(t)
	dir := t.TempDir()
	cert, key := certFiles(t, dir, 1)
	p := startProc(t, nil, "-redis", rds.URL(), "-format", "raw", "-tls-cert", cert, "-tls-key", key)
	if s := serialOf(t, p.addr); s != 1 {
		t.Fatalf("serial %d at start", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	open, _, _, err := ws.Dialer{TLSConfig: &tls.Config{InsecureSkipVerify: true}}.Dial(ctx, "wss://"+p.addr+"/?user_id=renew")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	readText(t, open) // the greeting

	certFiles(t, dir, 2) // the renewal overwrites both files
	hup(t, p, "SIGHUP: TLS certificate reloaded", 1)
	if s := serialOf(t, p.addr); s != 2 {
		t.Fatalf("serial %d after SIGHUP, want the renewed 2", s)
	}
	// The connection opened before the reload is still served.
	rds.Client().LPush(t.Context(), "user_renew_messages", "after the reload")
	if got := readText(t, open); got != "after the reload" {
		t.Fatalf("open connection got %q", got)
	}

	writeFile(t, cert, []byte("half-written")) // a broken renewal
	hup(t, p, "TLS certificate not reloaded", 1)
	if s := serialOf(t, p.addr); s != 2 {
		t.Fatalf("serial %d after a failed reload, want 2 kept", s)
	}
}

// hup sends SIGHUP and waits until the log holds n+previous lines with want.
func hup(t *testing.T, p *proc, want string, n int) {
	t.Helper()
	before := strings.Count(p.stderr.String(), want)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := strings.Count(p.stderr.String(), want); got < before+n {
			return fmt.Errorf("no %q in the log yet", want)
		}
		return nil
	})
}

func readText(t *testing.T, c interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	SetReadDeadline(time.Time) error
}) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := wsutil.ReadServerText(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// `redpush healthcheck` finds the server as the server itself does: from
// the same flags, from the same REDPUSH_* variables, or from the command
// line of the server's process (-pid; 1 in the container), TLS included.
func TestHealthcheckFollowsTheServersAddressAndTLS(t *testing.T) {
	rds := testutil.StartRedis(t)
	cert, key := certFiles(t, t.TempDir(), 1)
	p := startProc(t, nil, "-redis", rds.URL(), "-tls-cert", cert, "-tls-key", key)
	flags := []string{"-addr", p.addr, "-redis", rds.URL(), "-tls-cert", cert, "-tls-key", key}
	env := []string{"REDPUSH_ADDR=" + p.addr, "REDPUSH_TLS_CERT=" + cert, "REDPUSH_TLS_KEY=" + key}
	pid := []string{"-pid", strconv.Itoa(p.cmd.Process.Pid)}
	check := func(want int) {
		t.Helper()
		for _, tc := range []struct {
			name string
			env  []string
			args []string
		}{{"flags", nil, flags}, {"environment", env, nil}, {"process", nil, pid}} {
			code, _, stderr := runBinaryEnv(t, tc.env, append([]string{"healthcheck"}, tc.args...)...)
			if code != want {
				t.Errorf("healthcheck from the server's %s: exit %d (%s), want %d", tc.name, code, strings.TrimSpace(stderr), want)
			}
		}
	}
	check(0)
	rds.Stop() // not ready: /readyz answers 503
	check(1)
}

// Without TLS a SIGHUP is logged and changes nothing: its default action
// would have ended the process.
func TestSIGHUPWithoutTLSKeepsRunning(t *testing.T) {
	rds := testutil.StartRedis(t)
	p := startProc(t, nil, "-redis", rds.URL())
	hup(t, p, "SIGHUP: no TLS certificate to reload", 1)
	c := testutil.Dial(t, p.addr, "still")
	if got := c.MustRead(); got != "hello;\n" {
		t.Fatalf("greeting %q after SIGHUP", got)
	}
}

// -tls-cert and -tls-key end to end, in the built binary and a browser:
// the page comes over https:// and connects with wss:// by itself (the
// port speaks nothing but TLS), and a pushed message shows on it.
func TestTLSFlagsServeThePageAndItConnectsWithWSS(t *testing.T) {
	rds := testutil.StartRedis(t)
	cert, key := certFiles(t, t.TempDir(), 7)
	p := startProc(t, nil, "-redis", rds.URL(), "-tls-cert", cert, "-tls-key", key)
	if s := serialOf(t, p.addr); s != 7 {
		t.Fatalf("serial %d, want the certificate of -tls-cert", s)
	}
	// Plain HTTP on the TLS port gets no page.
	if resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + p.addr + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("the page was served over plain http on the TLS port")
		}
	}
	ctx := testutil.Browser(t, 60*time.Second, chromedp.Flag("ignore-certificate-errors", true))
	if err := chromedp.Do(ctx, chromedp.Navigate("https://"+p.addr+"/?user_id=7"),
		chromedp.WaitVisible(chromedp.CSS("#state.open"))); err != nil {
		t.Fatal(err)
	}
	url, err := chromedp.Run(ctx, chromedp.Evaluate[string](`client.ws.url`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "wss://" + p.addr + "/"; !strings.HasPrefix(url, want) {
		t.Fatalf("the page connected to %q, want %s…", url, want)
	}
	rds.Client().LPush(t.Context(), "user_7_messages", "over wss")
	testutil.PageText(t, ctx, "#content", "user_7_messages 队列发送消息:over wss", 15*time.Second)
	testutil.Screenshot(t, ctx, "tls-page.png")
}
