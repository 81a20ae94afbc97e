package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redpush/redpush/server"
)

// tokenCmd is `redpush token -secret S -user 42 -ttl 1h`: it prints an HS256
// token for trying -jwt-secret.
func tokenCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redpush token", flag.ContinueOnError)
	secret := fs.String("secret", "", "the -jwt-secret of the server")
	user := fs.String("user", "", "the user id (the token's sub)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	if code, done := parseSub(fs, "-secret S -user ID [-ttl 1h]", args, stdout, stderr); done {
		return code
	}
	if len(*secret) < 16 {
		fmt.Fprintln(stderr, "redpush token: -secret must be at least 16 bytes")
		return 2
	}
	tok, err := server.Sign([]byte(*secret), *user, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "redpush token: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// healthcheckCmd is `redpush healthcheck`: exit 0 when the server's /readyz
// answers 200, 1 otherwise (Docker reserves 2). The container image has no curl, so its HEALTHCHECK runs
// this. It finds the server as the server itself would: from the same flags
// and REDPUSH_* variables, or, given no flag, from the command line of the
// process -pid (1, the server, in the container), so that a listen address
// or TLS set on `docker run` is followed too. -url overrides all of that.
func healthcheckCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if code := healthcheck(args, getenv, stdout, stderr); code != 0 {
		return 1
	}
	return 0
}

func healthcheck(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o := &options{probe: true}
	fs := flag.NewFlagSet("redpush healthcheck", flag.ContinueOnError)
	level := defineFlags(fs, o)
	url := fs.String("url", "", "the `URL` that must answer 200 (default: /readyz of the server the other flags describe)")
	pid := fs.Int("pid", 1, "without server flags, read them from the command line of this redpush process")
	if code, done := parseSub(fs, "[-url URL | -pid PID | server flags]", args, stdout, stderr); done {
		return code
	}
	if *url == "" {
		serverFlags := 0
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "pid" {
				serverFlags++
			}
		})
		if serverFlags == 0 {
			if server, ok := serverArgs(*pid); ok {
				fs = flag.NewFlagSet("redpush", flag.ContinueOnError)
				o = &options{probe: true}
				level = defineFlags(fs, o)
				fs.SetOutput(io.Discard)
				if err := fs.Parse(server); err != nil {
					fmt.Fprintf(stderr, "redpush healthcheck: the flags of process %d: %v\n", *pid, err)
					return 2
				}
			}
		}
		if err := o.finish(fs, getenv, *level); err != nil {
			fmt.Fprintf(stderr, "redpush healthcheck: %v\n", err)
			return 2
		}
		*url = readyURL(o)
	}
	return probe(*url, stderr)
}

// serverArgs returns the flags of process pid if it is a redpush server.
func serverArgs(pid int) ([]string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, false
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if filepath.Base(argv[0]) != "redpush" || len(argv) > 1 && !strings.HasPrefix(argv[1], "-") {
		return nil, false // not redpush, or one of its subcommands
	}
	return argv[1:], true
}

// readyURL is the /readyz of the server o describes, over loopback when it
// listens on every address.
func readyURL(o *options) string {
	host, port, _ := net.SplitHostPort(o.cfg.Addr)
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "http"
	if o.tlsCert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/readyz"
}

func probe(url string, stderr io.Writer) int {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		// The probe asks this host's own server over loopback, whose
		// certificate names the public host, not 127.0.0.1, and it carries
		// no secret: the certificate is not checked.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "redpush healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "redpush healthcheck: %s: %s\n", url, resp.Status)
		return 1
	}
	return 0
}

// parseSub parses the flags of subcommand fs. done reports that the command
// ends here with code: 0 after -h, whose usage goes to stdout; 2 after a
// mistake, which flag reports on stderr.
func parseSub(fs *flag.FlagSet, synopsis string, args []string, stdout, stderr io.Writer) (code int, done bool) {
	rest, code, done := parseSubArgs(fs, synopsis, args, stdout, stderr)
	if !done && len(rest) > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), rest[0])
		return 2, true
	}
	return code, done
}

// parseSubArgs is parseSub for a subcommand that takes arguments after its
// flags: it returns them.
func parseSubArgs(fs *flag.FlagSet, synopsis string, args []string, stdout, stderr io.Writer) (rest []string, code int, done bool) {
	fs.SetOutput(io.Discard) // its error is printed below, in one line
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(stdout, "Usage: %s %s\n\nFlags:\n", fs.Name(), synopsis)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil, 0, true
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see %s -h)\n", fs.Name(), err, fs.Name())
		return nil, 2, true
	}
	return fs.Args(), 0, false
}
