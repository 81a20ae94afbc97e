package redisq

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redpush/redpush/internal/resp3"
)

// Relayed is one publication read from a relay channel.
type Relayed struct {
	Channel string
	Payload string
}

// Relays is an instance's subscription to the relay channels of its online
// users ([Queue.RelayChannel]). On one server (or a Sentinel-managed one)
// it is a go-redis PubSub and the ack script PUBLISHes. On a Cluster a
// plain PUBLISH is broadcast to every node over the cluster bus, so the
// script SPUBLISHes instead (sharded pub/sub, Redis 7.0: the relay channel
// carries the queue's hash tag, so only the master of the user's slot and
// its replicas see it) and Relays subscribes with SSUBSCRIBE on one
// connection per master ([shardConn]). go-redis cannot hold those: its
// PubSub talks to one node, and after a reconnect it resubscribes every
// shard channel in one SSUBSCRIBE, which Redis refuses (CROSSSLOT) as soon
// as they span two slots (go-redis issues 3133 and 3806, v9.23). A cluster
// without SPUBLISH (Redis < 7) keeps the plain PubSub and PUBLISH.
//
// Relays are best effort, as Redis pub/sub is: a publication made while a
// subscription is being (re)made is missed.
type Relays struct {
	ps  *redis.PubSub // not a sharded cluster; nil otherwise
	sh  *shardRelays  // a cluster with SPUBLISH; nil otherwise
	out <-chan Relayed
}

// SubscribeRelays starts the instance's relay subscription, with no
// channel yet. On a Cluster it first asks whether SPUBLISH exists, and
// from then on the ack script publishes with it; it must therefore run
// before the first acknowledgement.
func (q *Queue) SubscribeRelays(ctx context.Context) (*Relays, error) {
	cc, ok := q.cmd.(*redis.ClusterClient)
	if ok {
		sharded, err := hasCommand(ctx, cc, "spublish")
		if err != nil {
			return nil, err
		}
		ok = sharded
	}
	if !ok {
		ps := q.cmd.Subscribe(ctx)
		out := make(chan Relayed, 128)
		go func() {
			defer close(out)
			for m := range ps.Channel() {
				out <- Relayed{Channel: m.Channel, Payload: m.Payload}
			}
		}()
		return &Relays{ps: ps, out: out}, nil
	}
	q.sharded.Store(true)
	sh := newShardRelays(cc, "redpush-relay-"+q.instance, q.log)
	return &Relays{sh: sh, out: sh.out}, nil
}

// hasCommand reports whether Redis knows the command (COMMAND INFO answers
// a null for an unknown one).
func hasCommand(ctx context.Context, c redis.UniversalClient, name string) (bool, error) {
	v, err := c.Do(ctx, "COMMAND", "INFO", name).Slice()
	if err != nil {
		return false, err
	}
	return len(v) == 1 && v[0] != nil, nil
}

// Sharded reports whether relays use sharded pub/sub (SPUBLISH).
func (r *Relays) Sharded() bool { return r.sh != nil }

// Subscribe adds channels. A failure to reach Redis needs no retry: the
// channels are kept and subscribed again when the connection comes back.
func (r *Relays) Subscribe(ctx context.Context, channels ...string) error {
	if r.sh != nil {
		r.sh.subscribe(ctx, channels)
		return nil
	}
	return r.ps.Subscribe(ctx, channels...)
}

// Unsubscribe drops channels.
func (r *Relays) Unsubscribe(ctx context.Context, channels ...string) error {
	if r.sh != nil {
		r.sh.unsubscribe(channels)
		return nil
	}
	return r.ps.Unsubscribe(ctx, channels...)
}

// Messages delivers the publications, and is closed by Close.
func (r *Relays) Messages() <-chan Relayed { return r.out }

// Close ends the subscription.
func (r *Relays) Close() error {
	if r.sh != nil {
		r.sh.close()
		return nil
	}
	return r.ps.Close()
}

// shardRelays places each wanted channel on the connection of the master
// of its slot. A connection that breaks, is refused (MOVED after a slot
// moved, a failover), or is told by Redis that a channel left its node (a
// "sunsubscribe" push when the node gives the slot up) hands its channels
// back; they are placed again, after a backoff, on the master the cluster
// client then names (its slot map reloaded).
type shardRelays struct {
	cc   *redis.ClusterClient
	name string
	log  *slog.Logger
	out  chan Relayed
	kick chan struct{} // homeless channels wait
	stop chan struct{}
	life context.Context // ends at close: dials give up
	end  context.CancelFunc
	wg   sync.WaitGroup

	mu       sync.Mutex
	want     map[string]*shardConn // wanted channel → its connection; nil: waiting to be placed
	conns    map[string]*shardConn // by master address
	homeless int                   // wanted channels without a connection
	closed   bool
}

func newShardRelays(cc *redis.ClusterClient, name string, log *slog.Logger) *shardRelays {
	life, end := context.WithCancel(context.Background())
	s := &shardRelays{cc: cc, name: name, log: log, out: make(chan Relayed, 128),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), life: life, end: end,
		want: map[string]*shardConn{}, conns: map[string]*shardConn{}}
	s.wg.Add(1)
	go s.rehome()
	return s
}

func (s *shardRelays) subscribe(ctx context.Context, channels []string) {
	s.mu.Lock()
	var fresh []string
	for _, ch := range channels {
		if _, ok := s.want[ch]; !ok && !s.closed {
			s.want[ch] = nil
			s.homeless++
			fresh = append(fresh, ch)
		}
	}
	s.mu.Unlock()
	if len(fresh) > 0 && !s.place(ctx, fresh) {
		s.poke()
	}
}

func (s *shardRelays) unsubscribe(channels []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range channels {
		c, ok := s.want[ch]
		if !ok {
			continue
		}
		delete(s.want, ch)
		if c == nil {
			s.homeless--
			continue
		}
		c.drop(ch)
	}
}

// place puts the homeless channels among chans on their masters'
// connections; false if one could not be placed (no slot map yet).
func (s *shardRelays) place(ctx context.Context, chans []string) bool {
	all := true
	for _, ch := range chans {
		node, err := s.cc.MasterForKey(ctx, ch)
		if err != nil {
			all = false
			continue
		}
		addr := node.Options().Addr
		s.mu.Lock()
		if c, ok := s.want[ch]; !ok || c != nil || s.closed {
			s.mu.Unlock()
			continue // unwanted or placed meanwhile
		}
		c := s.conns[addr]
		if c == nil || !c.add(ch) {
			c = newShardConn(s, node)
			s.conns[addr] = c
			c.add(ch)
		}
		s.want[ch] = c
		s.homeless--
		s.mu.Unlock()
	}
	return all
}

// lost takes back channels that c no longer holds: they are placed again.
func (s *shardRelays) lost(c *shardConn, chans []string, connGone bool) {
	s.mu.Lock()
	if connGone && s.conns[c.addr] == c {
		delete(s.conns, c.addr)
	}
	n := 0
	for _, ch := range chans {
		if s.want[ch] == c {
			s.want[ch] = nil
			s.homeless++
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		s.poke()
	}
}

func (s *shardRelays) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// rehome places homeless channels again, after a backoff that grows while
// placing fails or the placed connections break at once, and after asking
// the cluster client to reload its slot map (the old one sent them there).
func (s *shardRelays) rehome() {
	defer s.wg.Done()
	var bo backoffDelay
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		for {
			if !bo.sleep(s.stop) {
				return
			}
			s.cc.ReloadState(context.Background())
			s.mu.Lock()
			var chans []string
			for ch, c := range s.want {
				if c == nil {
					chans = append(chans, ch)
				}
			}
			s.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			done := s.place(ctx, chans)
			cancel()
			if done {
				break
			}
		}
		s.mu.Lock()
		if s.homeless == 0 {
			bo.reset() // settled; a kick pending means it did not
		}
		s.mu.Unlock()
	}
}

func (s *shardRelays) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conns := s.conns
	s.conns = map[string]*shardConn{}
	s.mu.Unlock()
	close(s.stop)
	s.end()
	for _, c := range conns {
		c.close()
	}
	s.wg.Wait()
	close(s.out)
}

// shardConn is one connection to one master that holds SSUBSCRIBEs, one
// command per channel (one slot each). It lives as long as its connection:
// when that breaks, or Redis answers an error (MOVED: the channel's slot
// is elsewhere now), every channel goes back to shardRelays, and a new
// shardConn is made for the next placement on that master.
type shardConn struct {
	s    *shardRelays
	srv  *redis.Client
	addr string

	mu     sync.Mutex
	chans  map[string]struct{} // held, or to subscribe once connected
	unsubs map[string]int      // SUNSUBSCRIBEs whose confirmation was not read
	nc     net.Conn            // nil until connected, and once gone
	gone   bool
}

func newShardConn(s *shardRelays, srv *redis.Client) *shardConn {
	c := &shardConn{s: s, srv: srv, addr: srv.Options().Addr,
		chans: map[string]struct{}{}, unsubs: map[string]int{}}
	s.wg.Add(1)
	go c.run()
	return c
}

// add subscribes ch (at once if connected, else when connected); false
// if the connection is gone, its channels handed back already. Called
// under s.mu.
func (c *shardConn) add(ch string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone {
		return false
	}
	c.chans[ch] = struct{}{}
	c.send("SSUBSCRIBE", ch)
	return true
}

// drop unsubscribes ch. Called under s.mu.
func (c *shardConn) drop(ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.chans, ch)
	if c.nc != nil {
		c.unsubs[ch]++
		c.send("SUNSUBSCRIBE", ch)
	}
}

// send writes one command if connected; a failed write breaks the
// connection, which the reader then sees. Under c.mu.
func (c *shardConn) send(args ...string) {
	if c.nc == nil {
		return
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(pingTimeout))
	if _, err := c.nc.Write(resp3.AppendCommand(nil, args...)); err != nil {
		_ = c.nc.Close()
	}
}

func (c *shardConn) run() {
	defer c.s.wg.Done()
	err := c.serve()
	c.mu.Lock()
	c.gone = true
	nc := c.nc
	c.nc = nil
	chans := make([]string, 0, len(c.chans))
	for ch := range c.chans {
		chans = append(chans, ch)
	}
	c.mu.Unlock()
	if nc != nil {
		_ = nc.Close()
	}
	select {
	case <-c.s.stop:
		return
	default:
	}
	c.s.log.Debug("relay subscription to a cluster master ended; resubscribing its channels", "addr", c.addr, "err", err)
	c.s.lost(c, chans, true)
}

// serve connects, subscribes what it holds, and reads until the
// connection ends.
func (c *shardConn) serve() error {
	ctx, cancel := context.WithTimeout(c.s.life, 5*time.Second)
	l, err := dialLink(ctx, c.srv, c.s.name, nil)
	cancel()
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		_ = l.nc.Close()
		return errPipeDown
	}
	var buf []byte
	for ch := range c.chans {
		buf = resp3.AppendCommand(buf, "SSUBSCRIBE", ch)
	}
	c.nc = l.nc
	if len(buf) > 0 {
		_ = l.nc.SetWriteDeadline(time.Now().Add(pingTimeout))
		if _, err := l.nc.Write(buf); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()
	go c.keepAlive(l.nc)
	return c.read(l)
}

// read hands messages on until the connection ends. An error reply ends
// it too: it answers one of the SSUBSCRIBEs (MOVED, CROSSSLOT after a slot
// moved), and the channels are placed again from a fresh slot map.
func (c *shardConn) read(l *link) error {
	for {
		_ = l.nc.SetReadDeadline(time.Now().Add(pingEvery + pingTimeout))
		v, err := l.r.Read()
		if err != nil {
			return err
		}
		switch v := v.(type) {
		case resp3.Error:
			return v
		case resp3.Push:
			c.pushed(v)
		}
	}
}

func (c *shardConn) pushed(p resp3.Push) {
	if len(p.Vals) < 2 {
		return
	}
	ch, _ := p.Vals[0].(string)
	switch p.Kind {
	case "smessage":
		payload, _ := p.Vals[1].(string)
		select {
		case c.s.out <- Relayed{Channel: ch, Payload: payload}:
		case <-c.s.stop:
		}
	case "sunsubscribe":
		c.mu.Lock()
		if c.unsubs[ch] > 0 { // the answer to our SUNSUBSCRIBE
			if c.unsubs[ch]--; c.unsubs[ch] == 0 {
				delete(c.unsubs, ch)
			}
			c.mu.Unlock()
			return
		}
		_, held := c.chans[ch]
		delete(c.chans, ch)
		c.mu.Unlock()
		if held { // Redis dropped it: its slot left this node
			c.s.lost(c, []string{ch}, false)
		}
	}
}

// keepAlive PINGs every pingEvery, so that read's deadline passes only
// when the server stopped answering (a partition, a host gone).
func (c *shardConn) keepAlive(nc net.Conn) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-c.s.stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		if c.nc != nc {
			c.mu.Unlock()
			return
		}
		c.send("PING")
		c.mu.Unlock()
	}
}

func (c *shardConn) close() {
	c.mu.Lock()
	c.gone = true
	if c.nc != nil {
		_ = c.nc.Close()
	}
	c.mu.Unlock()
}
