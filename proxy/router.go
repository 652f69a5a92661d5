package proxy

import (
	"net"
	"strings"
)

// router picks a site by the request's host: an exact name, then the
// closest "*.parent" wildcard, then the port's catch-all.
type router struct {
	exact    map[string]*site
	wildcard map[string]*site // "example.com" for "*.example.com"
	catchAll *site
}

func newRouter() *router {
	return &router{exact: map[string]*site{}, wildcard: map[string]*site{}}
}

func (rt *router) add(host string, s *site) {
	switch {
	case host == "":
		rt.catchAll = s
	case strings.HasPrefix(host, "*."):
		rt.wildcard[host[2:]] = s
	default:
		rt.exact[host] = s
	}
}

func (rt *router) match(hostport string) *site {
	host := hostOnly(hostport)
	if s := rt.exact[host]; s != nil {
		return s
	}
	if s := rt.matchWildcard(host); s != nil {
		return s
	}
	return rt.catchAll
}

// matchWildcard finds the "*.parent" site for host: one label deep, as TLS
// wildcards match (RFC 6125 §6.4.3).
func (rt *router) matchWildcard(host string) *site {
	if len(rt.wildcard) == 0 {
		return nil
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		return rt.wildcard[host[i+1:]]
	}
	return nil
}

// hostOnly strips the port, IPv6 brackets and a trailing dot from a Host
// value and lower-cases it.
func hostOnly(hostport string) string {
	host := hostport
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(host, "."), "["), "]")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}
