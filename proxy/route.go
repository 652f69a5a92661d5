package proxy

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/upstream"
)

// site is one site block, shared by the handlers of every port it is on.
type site struct {
	name      string // the block's first address, for logs
	routes    []*route
	headers   headerOps    // the site-level header directives
	tunnel    *tunnelRoute // nil without a tunnel directive
	clientCAs []string     // the site's tls client_auth CA files; every request must carry a certificate of theirs
	limits    configs.Limits
	metrics   *siteMetrics // its request series, labelled with name
}

// route is one handle/handle_path block (or the site's own handler): a path
// pattern and one handler.
type route struct {
	match   configs.PathPattern
	strip   string // handle_path's prefix
	headers headerOps

	// Exactly one is set.
	proxy   *proxyRoute
	respond *respondRoute
	redir   *redirRoute
}

// proxyRoute is a reverse_proxy: the pool, and the header_up/header_down
// edits.
type proxyRoute struct {
	pool       *upstream.Pool
	headerUp   headerOps
	headerDown headerOps
}

type respondRoute struct {
	status int
	body   template
}

type redirRoute struct {
	to   template
	code int
}

// routeFor returns the first route of s whose pattern matches the request's
// path, or nil.
func (s *site) routeFor(r *http.Request) *route {
	if len(s.routes) == 1 && s.routes[0].match.MatchesAll() {
		return s.routes[0] // the common case: no path to clean
	}
	p := configs.RequestPath(r.URL.Path)
	for _, rt := range s.routes {
		if rt.match.Match(p) {
			return rt
		}
	}
	return nil
}

// stripTarget is the request target a handle_path route forwards: the
// request's path without the route's prefix (at least "/"), and its query.
func stripTarget(r *http.Request, prefix string) string {
	p := r.URL.Path
	if len(p) >= len(prefix) && strings.EqualFold(p[:len(prefix)], prefix) {
		p = p[len(prefix):]
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	u := url.URL{Path: p, RawQuery: r.URL.RawQuery}
	return u.RequestURI()
}

// serve runs the respond handler and returns the status and the body bytes
// written.
func (rr *respondRoute) serve(w http.ResponseWriter, r *http.Request) (int, int64) {
	body := rr.body.expand(r, "")
	if body != "" {
		if _, ok := w.Header()["Content-Type"]; !ok {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(rr.status)
	var n int
	if body != "" && r.Method != http.MethodHead {
		n, _ = io.WriteString(w, body)
	}
	return rr.status, int64(n)
}

// serve runs the redir handler.
func (rd *redirRoute) serve(w http.ResponseWriter, r *http.Request) int {
	w.Header().Set("Location", sameOrigin(rd.to.expand(r, "")))
	w.WriteHeader(rd.code)
	return rd.code
}

// sameOrigin keeps a redirect that starts with a path on this origin: a
// placeholder such as {path} can expand to "//evil.test/x" or "/\\evil.test",
// which browsers follow to another host. Leading slashes and backslashes
// collapse to one slash.
func sameOrigin(loc string) string {
	if len(loc) < 2 || loc[0] != '/' || (loc[1] != '/' && loc[1] != '\\') {
		return loc
	}
	return "/" + strings.TrimLeft(loc, "/\\")
}

// headerOp is a compiled header, header_up or header_down directive.
type headerOp struct {
	name   string
	value  template
	add    bool
	delete bool
}

type headerOps []headerOp

// apply edits h for request r; upstream fills {upstream_hostport}.
func (ops headerOps) apply(h http.Header, r *http.Request, upstream string) {
	for _, op := range ops {
		switch {
		case op.delete:
			delete(h, op.name)
		case op.add:
			vv := h[op.name]
			h[op.name] = append(vv[:len(vv):len(vv)], op.value.expand(r, upstream)) // never into a shared array
		default:
			h[op.name] = []string{op.value.expand(r, upstream)}
		}
	}
}

func compileHeaderOps(ops []configs.HeaderOp) headerOps {
	out := make(headerOps, 0, len(ops))
	for _, op := range ops {
		out = append(out, headerOp{name: op.Name, value: compileTemplate(op.Value), add: op.Add, delete: op.Delete})
	}
	return out
}

// template is a string with placeholders, split once at build time so a
// request only concatenates.
type template struct {
	parts []templatePart
	lit   string // the whole value when it has no placeholder
}

type templatePart struct {
	lit string
	ph  placeholder // 0: lit
}

type placeholder int

const (
	phNone placeholder = iota
	phHost
	phHostPort
	phURI
	phPath
	phQuery
	phScheme
	phUpstream
)

var placeholders = map[string]placeholder{
	"{host}": phHost, "{hostport}": phHostPort, "{uri}": phURI, "{path}": phPath, "{query}": phQuery,
	"{scheme}": phScheme, "{upstream_hostport}": phUpstream,
}

// compileTemplate splits s at the known placeholders (the Roamfile parser
// has refused unknown ones); other braces stay literal.
func compileTemplate(s string) template {
	var t template
	rest := s
	for rest != "" {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			break
		}
		ph, ok := placeholders[rest[i:i+j+1]]
		if !ok {
			t.parts = append(t.parts, templatePart{lit: rest[:i+1]})
			rest = rest[i+1:]
			continue
		}
		if i > 0 {
			t.parts = append(t.parts, templatePart{lit: rest[:i]})
		}
		t.parts = append(t.parts, templatePart{ph: ph})
		rest = rest[i+j+1:]
	}
	if !hasPlaceholder(t.parts) {
		return template{lit: s}
	}
	if rest != "" {
		t.parts = append(t.parts, templatePart{lit: rest})
	}
	return t
}

func hasPlaceholder(parts []templatePart) bool {
	for _, p := range parts {
		if p.ph != phNone {
			return true
		}
	}
	return false
}

// expand fills the template for r.
func (t template) expand(r *http.Request, upstream string) string {
	if t.parts == nil {
		return t.lit
	}
	var b strings.Builder
	for _, p := range t.parts {
		switch p.ph {
		case phNone:
			b.WriteString(p.lit)
		case phHost:
			b.WriteString(hostOnly(r.Host))
		case phHostPort:
			// As the client named it (Host, or HTTP/3's :authority): with
			// the port it used, which {host} drops (issue 13: a redirect
			// on port 20443 lost its port).
			b.WriteString(r.Host)
		case phURI:
			b.WriteString(r.URL.RequestURI())
		case phPath:
			b.WriteString(r.URL.Path)
		case phQuery:
			b.WriteString(r.URL.RawQuery)
		case phScheme:
			b.WriteString("https")
		case phUpstream:
			b.WriteString(upstream)
		}
	}
	return b.String()
}
