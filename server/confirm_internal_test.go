package server

import (
	"crypto/tls"
	"github.com/redpush/redpush/internal/testutil"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Over TLS, tls.Conn.CloseWrite sends close_notify but no TCP FIN; the
// server half-closes the socket below it too, and only then counts a FIN
// in SIOCOUTQ: ackedThrough never overstates the peer's acknowledgement
// (it once subtracted a FIN that was never queued: one byte too many).
func TestATLSHalfCloseDoesNotOverstateTheAcknowledgement(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ln := tls.NewListener(countingListener{raw}, &tls.Config{Certificates: []tls.Certificate{testutil.SelfSignedCert(t, 1)}})

	type res struct {
		c   *tls.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		tc := nc.(*tls.Conn)
		_ = tc.NetConn().(*countedConn).SetWriteBuffer(4 << 20)
		ch <- res{tc, tc.Handshake()}
	}()
	d := net.Dialer{Control: nil}
	cnc, err := d.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = cnc.(*net.TCPConn).SetReadBuffer(4096)
	client := tls.Client(cnc, &tls.Config{InsecureSkipVerify: true})
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	c := &conn{nc: r.c, writeTimeout: time.Second}
	c.wire.init(r.c)
	if !c.wire.counted {
		t.Skip("SIOCOUTQ not available")
	}
	// The client does not read: most of this stays unacknowledged.
	if _, err := r.c.Write(make([]byte, 512<<10)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let the window close
	c.wmu.Lock()
	c.closeLocked("test")
	c.wmu.Unlock()
	if !c.wire.fin.Load() || c.wire.closed.Load() {
		t.Fatalf("fin=%v closed=%v: expected a half-close", c.wire.fin.Load(), c.wire.closed.Load())
	}
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 5; i++ {
		acked, _ := c.ackedThrough()
		q := unsent(r.c)
		// SIOCOUTQ counts a queued FIN as one: the truth depends on whether
		// the socket really half-closed (left ESTABLISHED).
		unacked := int64(q)
		if q > 0 && tcpState(t, r.c) != 1 /* TCP_ESTABLISHED */ {
			unacked--
		}
		real := c.wireSent() - unacked
		t.Logf("sent=%d SIOCOUTQ=%d truly acked=%d ackedThrough=%d", c.wireSent(), q, real, acked)
		if q > 0 && acked > real {
			t.Errorf("ackedThrough %d overstates the peer's acknowledgement %d (no FIN was sent over TLS)", acked, real)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A connection whose client acknowledged nothing new for -write-timeout is
// closed after about that, not twice that (closeStalled once began to
// watch a connection's progress only when the batch was -write-timeout old).
func TestAStalledClientIsClosedAfterOneWriteTimeout(t *testing.T) {
	const wt = time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { nc, _ := ln.Accept(); acc <- nc }()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_ = cl.(*net.TCPConn).SetReadBuffer(4096)
	nc := (<-acc).(*net.TCPConn)
	defer nc.Close()
	_ = nc.SetWriteBuffer(4 << 20)
	h := &hub{writeTimeout: wt}
	c := &conn{nc: nc, writeTimeout: wt}
	c.wire.init(nc)
	if !c.wire.counted {
		t.Skip("SIOCOUTQ not available")
	}
	c.progressAt.Store(time.Now().UnixNano()) // as upgrade does
	w := func(n int) int64 {
		b := make([]byte, n)
		m, err := nc.Write(b)
		if err != nil {
			t.Fatal(err)
		}
		return c.sent.Add(int64(m))
	}
	w(100) // an earlier batch, acknowledged at once
	time.Sleep(100 * time.Millisecond)
	end := w(1 << 20) // the client stops reading: most of this is never acknowledged
	f := flight{n: 1, one: mark{c: c, end: end}, at: time.Now()}
	start := f.at
	for time.Since(start) < 4*wt {
		h.closeStalled(f) // as next() does while f is the oldest held
		if c.slowWhy.Load() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	acked, _ := c.ackedThrough()
	t.Logf("acked %d of %d; closed as stalled after %v (-write-timeout %v)", acked, end, took.Round(10*time.Millisecond), wt)
	if c.slowWhy.Load() == nil || took > wt*3/2 {
		t.Errorf("a client that acknowledged nothing new since the write was closed after %v, not about -write-timeout (%v)", took.Round(10*time.Millisecond), wt)
	}
}

// tcpState is the kernel's TCP state of the socket below tc (TCP_INFO).
func tcpState(t *testing.T, tc *tls.Conn) uint8 {
	rc, err := tc.NetConn().(*countedConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st uint8
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			st = info.State
		}
	})
	return st
}
