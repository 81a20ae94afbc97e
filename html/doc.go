// Package html holds the demo page of redpush, a port of the original's
// swoole.html, embedded in the binary and served at GET /.
//
// Entry point: [Page] renders the page once at start. The page connects to
// the host it was loaded from, so it works behind any address or port.
package html
