package html

import (
	"bytes"
	_ "embed"
	"html/template"
)

//go:embed index.html
var source string

// Client is redpush.js, the browser client the page is built on, served
// at /redpush.js: connect, reconnect with jittered backoff, acknowledged
// delivery with de-duplication by id.
//
//go:embed redpush.js
var Client []byte

var tmpl = template.Must(template.New("index").Parse(source))

// Options select the optional parts of the page.
type Options struct {
	// DemoPush shows the box that pushes a message to any user through
	// POST /demo/push (the embedded quick start only).
	DemoPush bool
	// Auth: the server requires ?token=; the page takes it from its own
	// URL or from a field where one can be pasted, instead of a user id.
	Auth bool
	// DefaultUser is the user the page connects as when its URL names
	// none: the user of the quick start's hint. Default "42".
	DefaultUser string
}

// Page renders the demo page.
func Page(o Options) []byte {
	if o.DefaultUser == "" {
		o.DefaultUser = "42"
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, o); err != nil {
		panic(err) // the template is embedded: an error is a build bug
	}
	return b.Bytes()
}
