package redisq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
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
// connection per master, one channel per command ([shardConn]). go-redis
// cannot hold those: its
// PubSub talks to one node, and after a reconnect it resubscribes every
// shard channel in one SSUBSCRIBE, which Redis refuses (CROSSSLOT) as soon
// as they span two slots (go-redis issues 3133 and 3806, v9.23). A cluster
// where a master lacks SPUBLISH (Redis < 7) keeps the plain PubSub and
// PUBLISH. The choice is made once, at start: after the cluster's Redis
// is upgraded to 7, restart the instances together (an instance started
// before relays with PUBLISH, one started after with SPUBLISH, and they
// do not hear each other).
//
// Relays are best effort, as Redis pub/sub is: a publication made while a
// subscription is being (re)made is missed.
type Relays struct {
	ps  *redis.PubSub // not a sharded cluster; nil otherwise
	sh  *shardRelays  // a cluster with SPUBLISH; nil otherwise
	out <-chan Relayed
}

// SubscribeRelays starts the instance's relay subscription, with no
// channel yet. On a Cluster it first asks every master whether it knows
// SPUBLISH, and if all do, the ack script publishes with it from then on;
// it must therefore run before the first acknowledgement. A cluster where
// one does not, or that does not answer COMMAND INFO (an ACL), keeps plain
// pub/sub.
func (q *Queue) SubscribeRelays(ctx context.Context) *Relays {
	if cc, ok := q.cmd.(*redis.ClusterClient); ok {
		ask := func(ctx context.Context) error { return allKnow(ctx, cc, "spublish") }
		if err := askUntilAnswered(ctx, ask, decideWithin); err != nil {
			if errors.Is(err, errNotAnswered) {
				q.log.Warn("relays use plain pub/sub on this cluster until a restart: a master could not be asked whether it has SPUBLISH", "why", err)
			} else {
				q.log.Info("relays use plain pub/sub on this cluster", "why", err)
			}
		} else {
			q.sharded.Store(true)
			sh := newShardRelays(cc, "redpush-relay-"+q.instance, q.log)
			return &Relays{sh: sh, out: sh.out}
		}
	}
	ps := q.cmd.Subscribe(ctx)
	out := make(chan Relayed, 128)
	go func() {
		defer close(out)
		for m := range ps.Channel() {
			out <- Relayed{Channel: m.Channel, Payload: m.Payload}
		}
	}()
	return &Relays{ps: ps, out: out}
}

// decideWithin bounds how long SubscribeRelays asks a master that cannot
// be reached whether it has SPUBLISH, before it settles for plain pub/sub.
const decideWithin = 5 * time.Second

// errNotAnswered: a master did not answer within decideWithin.
var errNotAnswered = errors.New("no answer")

// askUntilAnswered runs ask until Redis answers it: nil, or an error of
// Redis's own (a reply: a master without the command, an ACL refusing
// COMMAND INFO), which it returns. A failure to reach a master (a
// connection refused or broken, a timeout: a master restarting) is asked
// again, with a growing pause, for up to within; then it fails with
// errNotAnswered. Deciding on such a failure would pin the process to
// plain pub/sub for life.
func askUntilAnswered(ctx context.Context, ask func(context.Context) error, within time.Duration) error {
	deadline := time.Now().Add(within)
	pause := 50 * time.Millisecond
	for {
		actx, cancel := context.WithDeadline(ctx, deadline) // a dial may retry for longer
		err := ask(actx)
		cancel()
		if err == nil || answered(err) {
			return err
		}
		if !time.Now().Add(pause).Before(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: %w", errNotAnswered, err)
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		pause = min(2*pause, time.Second)
	}
}

// answered reports whether err is Redis's answer, not a failure to get
// one: a reply error (but those a master gives while it starts, fails
// over or is full for a moment: LOADING, BUSY, TRYAGAIN, CLUSTERDOWN,
// MASTERDOWN, max number of clients), or a master's word that it lacks
// the command.
func answered(err error) bool {
	if errors.Is(err, errUnknownCommand) {
		return true
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	passing := redis.IsLoadingError(err) || redis.IsTryAgainError(err) || redis.IsClusterDownError(err) ||
		redis.IsMasterDownError(err) || redis.IsMaxClientsError(err) || strings.HasPrefix(rerr.Error(), "BUSY")
	return !passing
}

// errUnknownCommand: a master answered that it does not know a command.
var errUnknownCommand = errors.New("unknown command")

// allKnow fails unless every master of cc knows the command (COMMAND INFO
// answers a null for an unknown one).
func allKnow(ctx context.Context, cc *redis.ClusterClient, name string) error {
	return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		v, err := c.Do(ctx, "COMMAND", "INFO", name).Slice()
		if err != nil {
			return err
		}
		if len(v) != 1 || v[0] == nil {
			return fmt.Errorf("%w: %s does not know %s", errUnknownCommand, c.Options().Addr, name)
		}
		return nil
	})
}

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
// of its slot. A channel whose SSUBSCRIBE Redis refuses (MOVED: its slot
// moved), or that Redis drops (a "sunsubscribe" push when its node gives
// the slot up), goes back to be placed again; so do all the channels of a
// connection that breaks or cannot be made (a master down, a failover).
// They are placed again after a pause, on the master the cluster client
// then names. Each master has its own: a master whose connections end
// without a confirmed subscription is not dialled again until its
// cooldown passed (50 ms, doubling to 2 s), which a confirmation from it
// ends; a master that stays down is not redialled in a tight loop, however
// often the others confirm or new channels come for its slots. A slot map
// that has not caught up yet (the client reloads it in the background)
// has a backoff of its own.
type shardRelays struct {
	cc       *redis.ClusterClient
	name     string
	log      *slog.Logger
	out      chan Relayed
	kick     chan struct{} // homeless channels wait
	stop     chan struct{}
	life     context.Context // ends at close: dials give up
	end      context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	want     map[string]*shardConn // wanted channel → its connection; nil: waiting to be placed
	conns    map[string]*shardConn // by master address
	homeless int                   // wanted channels without a connection
	closed   bool
	refused  time.Time // when a refused dial was last logged
	// cool holds the masters not to be dialled yet, by address.
	cool map[string]*cooling
}

// cooling is one master's cooldown: how long the last one was, and until
// when it lasts.
type cooling struct {
	d     time.Duration
	until time.Time
}

const (
	coolMin = 50 * time.Millisecond
	coolMax = 2 * time.Second
)

func newShardRelays(cc *redis.ClusterClient, name string, log *slog.Logger) *shardRelays {
	life, end := context.WithCancel(context.Background())
	s := &shardRelays{cc: cc, name: name, log: log, out: make(chan Relayed, 128),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), life: life, end: end,
		want: map[string]*shardConn{}, conns: map[string]*shardConn{}, cool: map[string]*cooling{}}
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
		if (c == nil || c.isGone()) && s.coolingLocked(addr) {
			s.mu.Unlock()
			all = false // its master is not dialled yet: rehome places it
			continue
		}
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

// coolingLocked reports whether the master at addr is cooling down.
func (s *shardRelays) coolingLocked(addr string) bool {
	cl := s.cool[addr]
	return cl != nil && time.Now().Before(cl.until)
}

// confirmedBy ends the cooldown of the master at addr: a subscription
// there was confirmed.
func (s *shardRelays) confirmedBy(addr string) {
	s.mu.Lock()
	delete(s.cool, addr)
	s.mu.Unlock()
}

// lost takes back channels that c no longer holds, to be placed again;
// connGone: c's connection is gone with them, and, if it never had a
// subscription confirmed, its master cools down longer.
func (s *shardRelays) lost(c *shardConn, chans []string, connGone bool) {
	s.mu.Lock()
	if connGone && s.conns[c.addr] == c {
		delete(s.conns, c.addr)
	}
	if connGone {
		cl := s.cool[c.addr]
		if cl == nil || c.confirmed.Load() {
			cl = &cooling{}
			s.cool[c.addr] = cl
		}
		cl.d = min(max(2*cl.d, coolMin), coolMax)
		cl.until = time.Now().Add(cl.d)
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

// refusedDial logs, once a minute, that Redis refuses the relay
// connection's setup (an ACL): its relays wait until it accepts.
func (s *shardRelays) refusedDial(addr string, err error) {
	s.mu.Lock()
	due := time.Since(s.refused) >= refusedLogEvery
	if due {
		s.refused = time.Now()
	}
	s.mu.Unlock()
	if due {
		s.log.Warn("Redis refuses the relay subscription; relayed copies to this instance wait until it accepts", "addr", addr, "err", err)
	}
}

func (s *shardRelays) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// rehome places homeless channels again, once the soonest cooldown of a
// master ended (or the slot map's backoff passed: a placement that found
// no master grows it, a complete one resets it), after asking the cluster
// client to reload its slot map (the old one sent them where they are
// not).
func (s *shardRelays) rehome() {
	defer s.wg.Done()
	var bo time.Duration // the slot map's
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		if !s.pause(max(bo, s.soonest())) {
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
		ctx, cancel := context.WithTimeout(s.life, 5*time.Second)
		placed := s.place(ctx, chans)
		cancel()
		switch {
		case placed:
			bo = 0
		case !s.anyCooling():
			bo = min(max(2*bo, coolMin), coolMax) // no slot map: it grows
		}
		if !placed {
			s.poke()
		}
	}
}

// pause waits d, or coolMin after a channel came back meanwhile (a poke:
// its master may not be cooling; the placing skips those that are, and
// the next pause waits for them); false once closed.
func (s *shardRelays) pause(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-s.stop:
			t.Stop()
			return false
		case <-t.C:
			return true
		case <-s.kick:
			t.Stop()
			if sooner := time.Now().Add(coolMin); sooner.Before(deadline) {
				deadline = sooner // what came back may be due: look
			}
		}
	}
}

// soonest is how long until a cooling master may be dialled again, at
// least coolMin.
func (s *shardRelays) soonest() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var d time.Duration
	for _, cl := range s.cool {
		if left := cl.until.Sub(now); left > 0 && (d == 0 || left < d) {
			d = left
		}
	}
	return max(d, coolMin)
}

// anyCooling reports whether a master is cooling down now.
func (s *shardRelays) anyCooling() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr := range s.cool {
		if s.coolingLocked(addr) {
			return true
		}
	}
	return false
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
// command per channel (a command's channels must share a slot). It lives
// as long as its connection: when that breaks, or cannot be made, every
// channel goes back to shardRelays, and the next placement on that master
// makes a new shardConn. Each command it sends gets one answer, in order:
// a confirmation push ("ssubscribe", "sunsubscribe"), a PONG, or an error
// reply; sent lists the commands whose answer was not read, so that an
// error reply (MOVED) is known to be about one channel, and a
// "sunsubscribe" push that answers none is Redis dropping a channel.
type shardConn struct {
	s    *shardRelays
	srv  *redis.Client
	addr string

	mu    sync.Mutex
	chans map[string]struct{} // held, or to subscribe once connected
	sent  []sentCmd           // commands whose answer was not read, oldest first
	nc    net.Conn            // nil until connected, and once gone
	gone  bool
	// confirmed: a subscription of this connection was confirmed.
	confirmed atomic.Bool
}

// sentCmd is a command of a shardConn awaiting its answer.
type sentCmd struct {
	cmd     string // SSUBSCRIBE, SUNSUBSCRIBE or PING
	channel string
}

func newShardConn(s *shardRelays, srv *redis.Client) *shardConn {
	c := &shardConn{s: s, srv: srv, addr: srv.Options().Addr, chans: map[string]struct{}{}}
	s.wg.Add(1)
	go c.run()
	return c
}

// isGone reports whether c's connection is gone. Called under s.mu.
func (c *shardConn) isGone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone
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
	c.send("SUNSUBSCRIBE", ch)
}

// send writes one command if connected; a failed write breaks the
// connection, which the reader then sees. Under c.mu.
func (c *shardConn) send(cmd, channel string) {
	if c.nc == nil {
		return
	}
	args := []string{cmd}
	if channel != "" {
		args = append(args, channel)
	}
	c.sent = append(c.sent, sentCmd{cmd, channel})
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
	if isRefusal(err) {
		c.s.refusedDial(c.addr, err)
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
	c.nc = l.nc
	var buf []byte
	for ch := range c.chans {
		buf = resp3.AppendCommand(buf, "SSUBSCRIBE", ch)
		c.sent = append(c.sent, sentCmd{"SSUBSCRIBE", ch})
	}
	if len(buf) > 0 {
		_ = l.nc.SetWriteDeadline(time.Now().Add(pingTimeout))
		if _, err := l.nc.Write(buf); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()
	c.s.wg.Add(1)
	go c.keepAlive(l.nc)
	return c.read(l)
}

// read hands messages on and matches answers to commands until the
// connection ends.
func (c *shardConn) read(l *link) error {
	for {
		_ = l.nc.SetReadDeadline(time.Now().Add(pingEvery + pingTimeout))
		v, err := l.r.Read()
		if err != nil {
			return err
		}
		if p, ok := v.(resp3.Push); ok {
			c.pushed(p)
			continue
		}
		if err := c.answered(v); err != nil {
			return err
		}
	}
}

// answered takes a reply (PONG or an error) as the answer to the oldest
// command sent. An SSUBSCRIBE refused (MOVED: the slot is on another
// master now) hands its channel back; anything else refused, or a reply
// that answers nothing, ends the connection.
func (c *shardConn) answered(v any) error {
	c.mu.Lock()
	if len(c.sent) == 0 {
		c.mu.Unlock()
		return fmt.Errorf("%w: a reply to no command: %v", resp3.ErrProtocol, v)
	}
	cmd := c.sent[0]
	c.sent = c.sent[1:]
	rerr, failed := v.(resp3.Error)
	_, held := c.chans[cmd.channel]
	if failed && cmd.cmd == "SSUBSCRIBE" && held {
		delete(c.chans, cmd.channel)
	}
	c.mu.Unlock()
	switch {
	case !failed:
		return nil
	case cmd.cmd == "SSUBSCRIBE":
		c.s.log.Debug("relay subscription refused; placing it again", "channel", cmd.channel, "err", rerr)
		if held {
			c.s.lost(c, []string{cmd.channel}, false)
		}
		return nil
	case cmd.cmd == "SUNSUBSCRIBE":
		return nil // it is not subscribed here in any case
	default:
		return rerr
	}
}

func (c *shardConn) pushed(p resp3.Push) {
	if len(p.Vals) < 1 {
		return
	}
	ch, _ := p.Vals[0].(string)
	switch p.Kind {
	case "smessage":
		if len(p.Vals) < 2 {
			return
		}
		payload, _ := p.Vals[1].(string)
		select {
		case c.s.out <- Relayed{Channel: ch, Payload: payload}:
		case <-c.s.stop:
		}
	case "ssubscribe":
		c.mu.Lock()
		c.take("SSUBSCRIBE", ch)
		c.mu.Unlock()
		if !c.confirmed.Swap(true) {
			c.s.confirmedBy(c.addr)
		}
	case "sunsubscribe":
		c.mu.Lock()
		if c.take("SUNSUBSCRIBE", ch) { // the answer to ours
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

// take removes the oldest sent command if it is cmd for channel; false if
// it is not (a push that answers no command). Under c.mu.
func (c *shardConn) take(cmd, channel string) bool {
	if len(c.sent) == 0 || c.sent[0] != (sentCmd{cmd, channel}) {
		return false
	}
	c.sent = c.sent[1:]
	return true
}

// keepAlive PINGs every pingEvery, so that read's deadline passes only
// when the server stopped answering (a partition, a host gone).
func (c *shardConn) keepAlive(nc net.Conn) {
	defer c.s.wg.Done()
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
		c.send("PING", "")
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
