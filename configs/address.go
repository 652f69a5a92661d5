package configs

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/roamgate/roamgate/upstream"
)

// hostPort is an address split by splitAddress.
type hostPort struct {
	scheme string // lower-cased; empty if none
	host   string // brackets removed
	port   string // empty if none
}

// splitAddress splits "[scheme://]host[:port]". Its errors are messages
// about s for the caller to place.
func splitAddress(s string) (hostPort, error) {
	var hp hostPort
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		hp.scheme, s = strings.ToLower(scheme), rest
	}
	if strings.Contains(s, "/") {
		return hp, errors.New("paths are not supported")
	}
	switch {
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"):
		hp.host = s[1 : len(s)-1]
	case strings.Contains(s, ":"):
		if !strings.HasPrefix(s, "[") && strings.Count(s, ":") > 1 {
			return hp, errors.New("IPv6 address needs brackets, as in [::1]:8443")
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return hp, errors.New("invalid host:port")
		}
		if port == "" {
			return hp, errors.New(`missing port after ":"`)
		}
		hp.host, hp.port = host, port
	default:
		hp.host = s
	}
	if strings.HasPrefix(s, "[") && !isIPv6(hp.host) {
		return hp, errors.New("brackets around a host that is not an IPv6 address")
	}
	return hp, nil
}

// parseSiteAddress parses the site address of t. An address without a port
// gets defaultPort.
func parseSiteAddress(t Token, defaultPort int) (Address, error) {
	fail := func(msg string) (Address, error) {
		return Address{}, errAtToken(t, "site address "+strconv.Quote(t.Text)+": "+msg)
	}
	hp, err := splitAddress(t.Text)
	switch {
	case err != nil:
		return fail(err.Error())
	case hp.scheme == "http":
		return fail("plain HTTP sites are not supported (HTTP/3 needs TLS); leave out the scheme or use https://")
	case hp.scheme != "" && hp.scheme != "https":
		return fail("unsupported scheme " + strconv.Quote(hp.scheme))
	case hp.host == "" && hp.port == "":
		return fail("missing host and port")
	case hp.host != "" && !validHost(hp.host, true):
		return fail("invalid host " + strconv.Quote(hp.host))
	}
	port := defaultPort
	if hp.port != "" {
		var ok bool
		if port, ok = parsePort(hp.port); !ok {
			return fail("invalid port " + strconv.Quote(hp.port) + " (want 0-65535)")
		}
	}
	return Address{Pos: t.Pos(), Host: canonicalHost(hp.host), Port: port, Text: t.Text}, nil
}

// canonicalHost lower-cases a name and writes an IP address in its
// canonical form ("::1" for "0:0::1"), keeping an IPv6 zone as written.
func canonicalHost(h string) string {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String()
	}
	return strings.ToLower(h)
}

// parseUpstream parses the upstream at the cursor: "host:port", "[::1]:port",
// ":port" (on localhost), "host" (port 80), optionally after "http://", or
// after "https://" for TLS (port 443); or "unix/PATH", a Unix domain
// socket ("unix//run/app.sock").
func parseUpstream(c *Cursor) (Upstream, error) {
	text := c.Val()
	fail := func(msg string) (Upstream, error) {
		return Upstream{}, c.Err("upstream " + strconv.Quote(text) + ": " + msg)
	}
	if path, ok := strings.CutPrefix(text, upstream.UnixPrefix); ok {
		if err := upstream.CheckSocketPath(path); err != nil {
			return fail(err.Error())
		}
		return Upstream{Pos: c.Token().Pos(), Addr: text, Text: text}, nil
	}
	if path, ok := strings.CutPrefix(text, "unix:"); ok {
		return fail("write a Unix socket as " + upstream.UnixPrefix + path)
	}
	hp, err := splitAddress(text)
	switch {
	case err != nil:
		return fail(err.Error())
	case hp.scheme != "" && hp.scheme != "http" && hp.scheme != "https":
		return fail("unsupported scheme " + strconv.Quote(hp.scheme) + " (want http:// or https://)")
	case hp.host == "" && hp.port == "":
		return fail("missing host and port")
	case hp.host != "" && !validHost(hp.host, false):
		return fail("invalid host " + strconv.Quote(hp.host))
	}
	if hp.host == "" {
		hp.host = "localhost"
	}
	tls := hp.scheme == "https"
	if hp.port == "" {
		hp.port = "80"
		if tls {
			hp.port = "443"
		}
	}
	if p, ok := parsePort(hp.port); !ok || p == 0 {
		return fail("invalid port " + strconv.Quote(hp.port) + " (want 1-65535)")
	}
	return Upstream{Pos: c.Token().Pos(), Addr: net.JoinHostPort(hp.host, hp.port), Text: text, TLS: tls}, nil
}

// parsePort parses a decimal port number 0-65535.
func parsePort(s string) (int, bool) {
	n, err := strconv.ParseUint(s, 10, 16)
	return int(n), err == nil
}

// validHost reports whether h is an IP address or a DNS name (ASCII
// letters, digits, '-' and '_' in dot-separated labels, the last not all
// digits). With wildcard, the first label may be "*".
func validHost(h string, wildcard bool) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for i, label := range labels {
		if wildcard && i == 0 && label == "*" && len(labels) > 1 {
			continue
		}
		if label == "" || len(label) > 63 {
			return false
		}
		for _, ch := range []byte(label) {
			if !isLetter(ch) && !isDigit(ch) && ch != '-' && ch != '_' {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}

func isLetter(ch byte) bool { return 'a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' }

func isDigit(ch byte) bool { return '0' <= ch && ch <= '9' }
