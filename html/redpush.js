// redpush.js: a small, dependency-free browser client for redpush.
// Served by redpush at /redpush.js; usable as a plain file as well.
//
//   const client = new RedpushClient({
//     url: "wss://push.example/",       // default: the host that served the page
//     userId: "42",                      // or token: "<JWT>" (-jwt-secret, -jwt-public-key)
//     ack: true,                         // acknowledged delivery (?ack=1)
//     onOpen() {},
//     onMessage(data, info) {},          // data: a string, or a Uint8Array for binary
//                                        // info: {id, redelivered} in ack mode, {} otherwise
//     onOther(text) {},                  // the greeting, and replies to send()
//     onDuplicate(id) {},                // ack mode: a redelivery of a message handled already
//     onClose(info) {},                  // {code, reason, opened, retryIn} (ms; -1: no retry)
//   });
//   client.send("text"); client.close();
//
// It reconnects after every close it did not ask for, after a delay that
// doubles from 0.5 s up to 30 s, at random between half of it and all of
// it, so that the clients a restart dropped do not come back at once; a
// connection that stayed open for 10 s resets the delay. With ack: true,
// every pushed message is acknowledged once onMessage returned (keep it
// synchronous: work it starts and does not finish before returning, a
// promise, is not waited for; if it
// throws, the client closes with 4000 and reconnects: the message was not
// acknowledged and comes again, every time until onMessage takes it), and
// a message whose id was
// already handled (a redelivery after a reconnect) is acknowledged again
// but not handed to onMessage: onMessage sees each message once per
// client object (the last 10,000 ids are remembered).
(function (global) {
  "use strict";

  const MIN_DELAY = 500, MAX_DELAY = 30000, STABLE = 10000, REMEMBER = 10000;

  class RedpushClient {
    constructor(opts) {
      this.opts = Object.assign({ onOpen() {}, onMessage() {}, onOther() {}, onDuplicate() {}, onClose() {} }, opts);
      this.seen = new Set();  // ids handled, oldest first (a Set keeps insertion order)
      this.delay = 0;
      this.stopped = false;
      this.ws = null;
      this.timer = null;
      this.connect();
    }

    // url is what the client connects to: the server with ?user_id= or
    // ?token=, and ack=1 when asked.
    url() {
      const o = this.opts;
      let base = o.url;
      if (!base) {
        base = (global.location.protocol === "https:" ? "wss://" : "ws://") + global.location.host + "/";
      }
      const q = new URLSearchParams();
      if (o.token) q.set("token", o.token);
      else q.set("user_id", String(o.userId));
      if (o.ack) q.set("ack", "1");
      return base + (base.includes("?") ? "&" : "?") + q.toString();
    }

    connect() {
      this.timer = null;
      if (this.stopped) return;
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (e) { // a malformed URL: said as a close, and tried again later
        this.retry({ code: 1006, reason: String(e) }, 0);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let opened = 0;
      ws.onopen = () => {
        opened = Date.now();
        this.opts.onOpen();
      };
      ws.onmessage = (ev) => this.receive(ws, ev.data);
      ws.onclose = (ev) => {
        if (this.ws === ws) this.ws = null;
        if (opened && Date.now() - opened >= STABLE) this.delay = 0;
        this.retry(ev, opened);
      };
    }

    // retry schedules the next connection after a growing, jittered delay
    // (unless close() was called) and reports the close.
    retry(ev, opened) {
      let retryIn = -1;
      if (!this.stopped) {
        this.delay = Math.min(Math.max(2 * this.delay, MIN_DELAY), MAX_DELAY);
        retryIn = Math.round(this.delay / 2 + Math.random() * this.delay / 2);
        this.timer = setTimeout(() => this.connect(), retryIn);
      }
      this.opts.onClose({ code: ev.code, reason: ev.reason, opened: opened > 0, retryIn });
    }

    receive(ws, data) {
      if (!this.opts.ack) {
        this.opts.onMessage(typeof data === "string" ? data : new Uint8Array(data), {});
        return;
      }
      const m = pushed(data);
      if (!m) {
        this.opts.onOther(data);
        return;
      }
      if (!this.seen.has(m.id)) {
        try {
          this.opts.onMessage(m.data, { id: m.id, redelivered: m.redelivered });
        } catch (e) {
          // Unhandled: not acknowledged, and no later ack (they are
          // cumulative) may cover it: it comes again on the next
          // connection. (A browser may close with 1000 or 3000-4999 only.)
          ws.close(4000, "onMessage failed");
          setTimeout(() => { throw e; });
          return;
        }
        this.remember(m.id);
      } else {
        this.opts.onDuplicate(m.id);
      }
      // Cumulative: this message and every one before it on this connection.
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ack: m.id }));
    }

    remember(id) {
      this.seen.add(id);
      if (this.seen.size > REMEMBER) this.seen.delete(this.seen.values().next().value);
    }

    send(text) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
    }

    // close ends the connection for good: no reconnect.
    close() {
      this.stopped = true;
      if (this.timer) clearTimeout(this.timer);
      if (this.ws) this.ws.close(1000);
    }
  }

  // pushed parses a pushed message of ack mode:
  // {"id","data"} or {"id","data_b64"}, with "redelivered":true when sent before.
  function pushed(data) {
    if (typeof data !== "string" || data[0] !== "{") return null;
    let m;
    try { m = JSON.parse(data); } catch (e) { return null; }
    if (typeof m.id !== "string") return null;
    if (typeof m.data === "string") return { id: m.id, data: m.data, redelivered: m.redelivered === true };
    if (typeof m.data_b64 === "string") {
      const bin = atob(m.data_b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return { id: m.id, data: bytes, redelivered: m.redelivered === true };
    }
    return null;
  }

  global.RedpushClient = RedpushClient;
})(typeof window !== "undefined" ? window : globalThis);
