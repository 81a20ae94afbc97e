package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/redpush/redpush/internal/testutil"
	"github.com/redpush/redpush/redisq"
)

// BenchmarkPopWriteAck is the consumer's hot path against a real
// redis-server and a real loopback socket: pop a batch into the processing
// list (acking the previous one in the same round trip), encode it, write it.
// ns/op is per message.
func BenchmarkPopWriteAck(b *testing.B) {
	for _, batch := range []int{1, 16, 128} {
		b.Run(fmt.Sprint("batch=", batch), func(b *testing.B) {
			rds := testutil.StartRedis(b)
			clients, err := redisq.Dial(context.Background(), rds.URL(), 2)
			if err != nil {
				b.Fatal(err)
			}
			defer clients.Close()
			q, _ := redisq.New(clients.Blocking, clients.Command, redisq.Config{Instance: "b", Batch: batch})
			c := loopbackConn(b)
			ctx := context.Background()
			rc := rds.Client()
			for i := 0; i < b.N; i += 1000 { // queue b.N messages
				p := rc.Pipeline()
				for j := i; j < min(i+1000, b.N); j++ {
					p.LPush(ctx, "user_42_messages", "order shipped, a typical short payload")
				}
				if _, err := p.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			enc := encoder{format: FormatSwoole}
			buf := make([]byte, 0, 64<<10)
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; n < b.N; {
				msgs, err := q.AckPop(ctx, "42")
				if err != nil || len(msgs) == 0 {
					b.Fatalf("AckPop: %v %d after %d of %d", err, len(msgs), n, b.N)
				}
				buf = enc.appendFrames(buf[:0], "42", "user_42_messages", msgs)
				if err := c.write(buf); err != nil {
					b.Fatal(err)
				}
				n += len(msgs)
			}
			if err := q.Ack(ctx, "42"); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// loopbackConn returns a conn whose peer drains everything it receives.
func loopbackConn(b *testing.B) *conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{})
	go func() {
		peer, err := ln.Accept()
		close(accepted)
		if err == nil {
			_, _ = io.Copy(io.Discard, peer)
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	// Closing the listener before its Accept would reset the connection.
	<-accepted
	b.Cleanup(func() { nc.Close() })
	return &conn{nc: nc, writeTimeout: 10e9, m: newMetrics()}
}
