// Package html holds the demo page of redpush, a port of the original's
// swoole.html, embedded in the binary and served at GET /.
//
// Entry point: [Page] renders the page once at start. The page connects to
// the host it was loaded from, so it works behind any address or port, as
// the user its URL names or Options.DefaultUser (with authentication on,
// with the token of its URL or one pasted into it). When a connection fails
// before opening, it asks GET /check why and shows the status and reason,
// which a browser never reveals for a refused upgrade.
//
// The page is built on [Client], redpush.js, served at GET /redpush.js: a
// small browser client without dependencies that reconnects with a
// growing, jittered delay and, in acknowledged delivery (?ack=1; the
// page's switch), acknowledges each message once handled and drops
// redeliveries of ids it handled already.
package html
