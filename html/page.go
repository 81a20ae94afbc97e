package html

import (
	"bytes"
	_ "embed"
	"html/template"
)

//go:embed index.html
var source string

var tmpl = template.Must(template.New("index").Parse(source))

// Options select the optional parts of the page.
type Options struct {
	// DemoPush shows the box that pushes a message to any user through
	// POST /demo/push (the embedded quick start only).
	DemoPush bool
}

// Page renders the demo page.
func Page(o Options) []byte {
	var b bytes.Buffer
	if err := tmpl.Execute(&b, o); err != nil {
		panic(err) // the template is embedded: an error is a build bug
	}
	return b.Bytes()
}
