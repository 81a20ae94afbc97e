// Command reactorprobe measures what an idle WebSocket connection costs the
// server process (issue 10 §2: "a reactor that costs nothing per idle
// connection"). It is a throwaway probe, kept so the numbers below can be
// checked again. It is a nested module (its own go.mod) so that gnet never
// enters redpush's go.mod.
//
// One binary, two processes (the open-file limit is 20,000 per process):
//
//	reactorprobe -role server -mode MODE -addr 127.0.0.1:PORT -n 10000
//	reactorprobe -role client            -addr 127.0.0.1:PORT -n 10000
//
// or `bash run.sh [N] [RUNS] [modes...]` (one pair at a time, a fresh port
// per run, JSON lines appended to results.jsonl) then
// `python3 summarize.py results.jsonl` for the medians.
//
// Server modes (all upgrade with gobwas/ws and send a small text greeting,
// "hello <i>", right after the upgrade; all echo text frames back and take
// server-initiated pushes):
//
//	goroutine    today's model: plain net.Listener, a goroutine per
//	             connection doing ws.Upgrade, then blocked in Peek(1) on a
//	             bufio.NewReaderSize(conn, 256), as server/reader.go does.
//	epoll        net.Listener, ws.Upgrade in an ants pool task, then the fd
//	             is dup'ed (F_DUPFD_CLOEXEC via SyscallConn().Control) and
//	             the net.Conn closed, so Go's netpoller lets go of it; the
//	             dup goes in our epoll set (golang.org/x/sys/unix), level-
//	             triggered + EPOLLONESHOT. One goroutine in EpollWait hands
//	             readable connections to an ants PoolWithFunc; the task reads
//	             once into a pooled 4 KB buffer, handles complete frames,
//	             keeps only an incomplete tail, re-arms with EPOLL_CTL_MOD.
//	             Pushes are a direct unix.Write under the connection's mutex;
//	             what the socket refuses (EAGAIN) waits in the connection
//	             for EPOLLOUT.
//	epoll-keep   epoll, but the net.Conn is kept and its own fd registered:
//	             the fd sits in Go's netpoller and in ours (the variant to
//	             avoid; measured to explain the 1.1 KB reference).
//	gnet         gnet/v2 v2.9.7 owns the listener (2 event loops). The HTTP
//	             head is taken from gnet's inbound buffer (Peek until
//	             "\r\n\r\n") and given to ws.Upgrade as an io.ReadWriter
//	             (bytes.Reader over the head + gnet.Conn as the writer). A
//	             request that is not an upgrade is served by an http.ServeMux
//	             through a buffering ResponseWriter (GET /healthz here) and
//	             closed. Pushes: gnet.Conn.AsyncWrite.
//	gnet-enroll  Go's net.Listener keeps the port and ws.Upgrade runs as in
//	             epoll; the upgraded net.Conn is handed to gnet with
//	             Engine.Register(NewNetConnContext(...)) (gnet dups the fd,
//	             closes the net.Conn, polls the dup). gnet still needs a
//	             listener of its own: tcp://127.0.0.1:0, unused.
//
// The client opens -n connections from 127.0.0.1..127.0.0.4 (64 dials at a
// time), reads the greeting and holds them idle (a goroutine each: the
// client is not measured). The server takes a snapshot when it is ready
// (before any client: run.sh waits for READY on its stderr) and another
// when all n are connected and -settle (5 s) of idleness has passed: VmRSS
// from /proc/self/status as is ("raw"), then after runtime.GC +
// debug.FreeOSMemory ("GC"), plus heap in use, stack in use, goroutines,
// threads, and the process CPU (getrusage) over the idle window. KB/conn =
// (RSS after − RSS before)/n. Kernel socket buffers are not in VmRSS.
// Then the server pushes one text frame "p <send time ns>" to 1,000
// distinct random connections from one goroutine; the client measures the
// latency of each (same host clock) and then sends "e <ns>" on 100 random
// connections, which the server echoes from its read path (pool task,
// event loop); then the client closes everything and both exit.
// PROBE_DEBUG=1 logs every gnet OnTraffic.
//
// # Results (2026-11-27, 2 shared cores, another agent's tests running)
//
// N = 10,000 connections, 3 runs per mode, medians (results.jsonl has every
// run; the three runs of each mode agree within 0.02 KB/conn):
//
//	mode         KB/conn  KB/conn  heap B/  goroutines  heap   stacks  threads  idle CPU
//	             (GC)     (raw)    conn     (idle)      MiB    MiB              ms per 5 s
//	goroutine    5.77     5.92     1255     10004       12.6   39.4     7       3.7
//	epoll        0.17     0.49      101         9        2.0    0.6    12       2.8
//	epoll-keep   1.07     1.19      456         9        5.5    0.5     8       2.2
//	gnet         0.48     0.69      433         7        4.9    0.5     9       2.8
//	gnet-enroll  0.70     0.90      615        19        6.7    0.7    15       5.1
//
// The goroutine model reproduces the 5.9 KB: a 4 KB stack per
// goroutine (39.4 MiB / 10,000) + ~1.3 KB of heap (netFD, bufio 256,
// conn). epoll-keep reproduces its 1.1 KB: what epoll saves over it is the
// net.Conn/netFD and Go's pollDesc (off-heap, so RSS but not heap). Idle
// CPU is ~0 everywhere (2–5 ms of CPU in 5 s, <0.1% of a core: sysmon,
// the ants purge tickers, gnet's loops; no busy polling).
//
// Server-initiated writes, 1,000 distinct random idle connections, pushed
// one after another from one goroutine (medians of 3; latency = client
// read time − frame creation time, so it includes the client's 10,000
// goroutines competing for the same 2 cores):
//
//	mode         delivered  push loop  p50      p99      echo (100)  echo p50/p99
//	goroutine    1000/1000  24.2 ms    1.5 ms   4.7 ms   100/100     0.19/0.42 ms
//	epoll        1000/1000  19.5 ms    1.1 ms   4.9 ms   100/100     0.22/0.44 ms
//	epoll-keep   1000/1000  21.2 ms    2.0 ms   4.2 ms   100/100     0.20/2.3 ms
//	gnet         1000/1000   1.8 ms    8.9 ms  13.0 ms   100/100     0.12/0.36 ms
//	gnet-enroll  1000/1000   1.1 ms    7.5 ms  12.9 ms   100/100     0.14/0.33 ms
//
// epoll writes in the caller (a syscall per push, ~20 µs with the client
// waking on the other core); gnet's AsyncWrite only queues (1–2 ms for
// 1,000) and the loop writes later, so each frame waits behind the queue:
// higher per-frame latency for a burst, same total time.
//
// # Code cost and traps
//
// Lines without comments or blanks: goroutine 87, epoll 259 (incl. the
// epoll-keep switch, write buffering for EAGAIN/EPOLLOUT, close), gnet +
// gnet-enroll 210, of which the HTTP-on-the-gnet-port shim is 37 and the
// enroll path ~25; frame.go (a 59-line allocation-free frame parser over a
// byte slice) serves epoll and gnet: neither can use ws.ReadHeader's
// blocking io.Reader model.
//
// Traps met or avoided:
//   - gnet: Conn.Discard(n) with n <= 0 discards EVERYTHING buffered. A
//     frame split over two reads (wsutil.WriteClientText writes header and
//     payload in two writes, so this happens in practice) parsed as 0 bytes
//     consumed, Discard(0) threw the header away and the echo was lost.
//   - gnet: Engine.Register needs a load balancer other than RoundRobin
//     (documented data race) and a listener of gnet's own; each
//     enrolment runs on gnet's goroutine pool and dups the fd.
//   - gnet prints its start-up line on stdout at INFO whatever the level.
//   - epoll: EpollWait returns EINTR all the time (Go's preemption signal
//     SIGURG): retry, do not fail.
//   - epoll: fd numbers are reused at once after close; an event already
//     returned for the old fd must not reach the new connection: a
//     generation number travels in EpollEvent.Pad and is checked.
//   - epoll: (*net.TCPConn).File() dups too, but the *os.File it returns
//     is put in Go's netpoller, and its Fd() method (the only way to get
//     the number) switches the descriptor to BLOCKING mode on purpose (Go
//     1.26 os/file_unix.go, net_newUnixFile); O_NONBLOCK belongs to the
//     open file description, so the original socket turns blocking too and
//     a reactor read would hang a pool worker. SyscallConn().Control +
//     F_DUPFD_CLOEXEC keeps the shared O_NONBLOCK. Keeping the net.Conn (epoll-keep) leaves the fd in
//     Go's edge-triggered netpoller too (a wasted wakeup per readable
//     event), costs 0.9 KB/conn more, and the net.Conn must stay reachable
//     or its finalizer closes the fd under the reactor.
//   - epoll/gnet-enroll: ws.Upgrade reads through a pooled bufio.Reader;
//     bytes a client sends before it has the 101 are dropped with it (RFC
//     6455 forbids sending them, so only broken clients lose anything). The
//     gnet mode gives ws.Upgrade exactly the head and keeps the rest.
//   - epoll: EPOLLONESHOT + level-triggered: one task per connection at a
//     time, one read per task, re-arm after; a push that leaves bytes
//     unsent re-arms with EPOLLOUT under the connection's mutex, so an
//     extra wake-up can happen and is harmless (the second task reads
//     EAGAIN). The EAGAIN/EPOLLOUT path was not exercised by this probe.
//   - Both reactors see ciphertext under TLS. redpush terminates TLS itself
//     (tls.NewListener in server/server.go); crypto/tls has no
//     non-blocking API for TCP, so a TLS connection keeps a goroutine (or
//     TLS moves to a proxy in front) whichever reactor is chosen.
//
// # HTTP and WebSocket on one port with gnet
//
// Possible two ways. (1) gnet owns the port: every byte arrives in
// OnTraffic, so HTTP must be parsed there; http.ReadRequest + an
// http.Handler into a buffer does GET /healthz in 37 lines, but redpush's
// POST /api/push bodies, keep-alive, chunked bodies, ReadHeaderTimeout
// (gnet has no per-connection timers), HTTP/2 and TLS would all have to be
// written over gnet by hand: a second HTTP server. (2) net/http (or any
// net.Listener) keeps the port, upgrades as today (Hijack + ws.Upgrade),
// then Engine.Register hands the socket to gnet: ~25 lines, nothing of the
// HTTP side changes, 0.70 KB per idle connection. The raw epoll mode
// shares the port exactly like (2) with no third-party loop at all.
package main
