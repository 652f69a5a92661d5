package configs

import (
	"net"
	"slices"
	"strconv"
)

var tunnelOptions = []string{"dial_timeout", "token"}

// errOpenTunnel ends the error about a tunnel that no one has to
// authenticate for.
const errOpenTunnel = "needs client authentication (tls { client_auth { trusted_ca_cert_file FILE } } or a token): " +
	"roamgate is never an open proxy"

// tunnel reads
//
//	tunnel HOST:PORT {
//		token TOKEN...
//		dial_timeout DURATION
//	}
//
// into the site, reporting a bad backend and each bad subdirective on its
// own. Whether anyone has to authenticate is checked with the whole site
// read (the tls directive may come later): see builder.checkTunnel.
func tunnel(b *builder, c *Cursor, sc *scope) error {
	tn := &Tunnel{Pos: c.Token().Pos(), DialTimeout: DefaultDialTimeout}
	sc.site.Tunnel = tn
	if c.NextArg() {
		backend, err := parseTunnelBackend(c)
		b.report(err)
		tn.Backend = backend
		if c.CountRemainingArgs() > 0 {
			b.report(c.ArgErr())
			for c.NextArg() {
			}
		}
	} else {
		b.report(c.Err("missing backend address (want tunnel HOST:PORT, as in tunnel 127.0.0.1:22)"))
	}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(tunnelSubdirective(c, tn, sc, seen))
	}
	return nil
}

func tunnelSubdirective(c *Cursor, tn *Tunnel, sc *scope, seen map[string]Position) error {
	name := c.Val()
	switch {
	case !slices.Contains(tunnelOptions, name):
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, tunnelOptions))
	case name == "token":
		sc.authHidden = true // written, valid or not: no error about a missing one
		if c.CountRemainingArgs() == 0 {
			return c.ArgErr()
		}
		for c.NextArg() {
			if msg := bearerTokenError(c.Val()); msg != "" {
				// Never quote the token: errors end up in logs.
				return c.Err("token: " + msg)
			}
			if !slices.Contains(tn.Tokens, c.Val()) {
				tn.Tokens = append(tn.Tokens, c.Val())
			}
		}
		return c.endOfLine()
	case !setOnce(c, seen):
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c) // dial_timeout
	if err != nil {
		return err
	}
	return durationArg(c, t, &tn.DialTimeout, true)
}

// bearerTokenError returns why s is not a bearer token, or "" if it is
// one: the b64token of RFC 6750 §2.1, letters, digits and "-._~+/" with
// "=" only at the end.
func bearerTokenError(s string) string {
	body := s
	for len(body) > 0 && body[len(body)-1] == '=' {
		body = body[:len(body)-1]
	}
	switch {
	case s == "":
		return "empty token"
	case body == "":
		return "invalid token: only \"=\" (want letters, digits and -._~+/, with = only at the end; RFC 6750 §2.1)"
	}
	for i := range len(body) {
		if ch := body[i]; !isLetter(ch) && !isDigit(ch) && !isTokenPunct(ch) {
			var what string
			switch {
			case ch == '=':
				what = `"=" before the end`
			case ch < 0x20 || ch >= 0x7f:
				what = "a control or non-ASCII byte"
			case ch == ' ':
				what = "a space"
			default:
				what = strconv.QuoteRune(rune(ch))
			}
			return "invalid token: " + what + " at byte " + strconv.Itoa(i+1) +
				" (want letters, digits and -._~+/, with = only at the end; RFC 6750 §2.1)"
		}
	}
	return ""
}

func isTokenPunct(ch byte) bool {
	switch ch {
	case '-', '.', '_', '~', '+', '/':
		return true
	}
	return false
}

// parseTunnelBackend parses the tunnel backend at the cursor: "host:port",
// "[::1]:port" or ":port" (on localhost), normalized like Upstream.Addr.
// Unlike an upstream it needs its port (there is no default for raw TCP)
// and takes no scheme.
func parseTunnelBackend(c *Cursor) (string, error) {
	text := c.Val()
	fail := func(msg string) (string, error) {
		return "", c.Err("backend " + strconv.Quote(text) + ": " + msg)
	}
	hp, err := splitAddress(text)
	switch {
	case hp.scheme != "":
		return fail("a tunnel carries raw TCP: no scheme (want HOST:PORT, as in 127.0.0.1:22)")
	case err != nil:
		return fail(err.Error())
	case hp.port == "":
		return fail("missing port (want HOST:PORT, as in 127.0.0.1:22)")
	case hp.host != "" && !validHost(hp.host, false):
		return fail("invalid host " + strconv.Quote(hp.host))
	}
	if p, ok := parsePort(hp.port); !ok || p == 0 {
		return fail("invalid port " + strconv.Quote(hp.port) + " (want 1-65535)")
	}
	if hp.host == "" {
		hp.host = "localhost"
	}
	return net.JoinHostPort(hp.host, hp.port), nil
}
