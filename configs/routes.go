package configs

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"unicode"
)

// handle reads
//
//	handle [PATTERN] {
//		reverse_proxy ...|respond ...|redir ...
//		header ...
//	}
//
// or handle_path PATTERN { ... }, which needs a prefix pattern and strips
// it, into a route of the site. Errors in the pattern and in the block are
// reported on their own.
func handle(b *builder, c *Cursor, sc *scope) error {
	name := c.Val()
	sc.blocks++
	rt := Route{Pos: c.Token().Pos()}
	valid := true // the pattern
	switch {
	case c.NextArg():
		var err error
		rt.Path, rt.StripPrefix, err = parsePattern(c, name == "handle_path")
		b.report(err)
		valid = err == nil
		if c.CountRemainingArgs() > 0 {
			b.report(c.ArgErr())
			for c.NextArg() {
			}
		}
	case name == "handle_path":
		b.report(c.ArgErr())
		valid = false
	}
	if !c.opensBlock() {
		return c.Errf("missing block (want %s PATTERN { ... } with a handler inside)", name)
	}
	c.Next()
	// The segment ends with the "}" that matches this "{": the parser made
	// it so, and checked the braces inside.
	inner, err := (&parser{toks: c.seg[c.i+1 : len(c.seg)-1]}).body(nil)
	for c.Next() {
	}
	if err != nil {
		return err
	}
	blk := &scope{site: sc.site, block: name, route: &rt, headers: &rt.Headers}
	b.directives(inner, blk)
	if blk.handler == "" && !blk.hidden {
		b.report(newError(rt.Pos, name, nil, "no handler (want reverse_proxy, respond or redir)"))
	}
	if valid {
		b.addRoute(sc, name, rt)
	}
	return nil
}

// parsePattern parses the path pattern at the cursor (see Route.Path); "*"
// becomes "", which matches every path. For handle_path (strip) it must be
// a prefix, and strip is the part before its "*" without a trailing "/".
func parsePattern(c *Cursor, stripPath bool) (pattern, strip string, err error) {
	p := c.Val()
	if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "*") {
		return "", "", c.Errf("invalid pattern %q (want a path starting with / or *, as in /api/*)", p)
	}
	prefix := strings.HasPrefix(p, "/") && strings.HasSuffix(p, "*")
	if stripPath && !prefix {
		return "", "", c.Errf("pattern %q is not a prefix (want one such as /api/*)", p)
	}
	if p == "*" {
		return "", "", nil
	}
	lit := strings.TrimSuffix(strings.TrimPrefix(p, "*"), "*") // the literal part
	switch {
	case lit == "":
		return "", "", c.Errf("invalid pattern %q (use * or no pattern to match every path)", p)
	case strings.Contains(lit, "*"):
		return "", "", c.Errf("invalid pattern %q (* only at the start or the end)", p)
	}
	// Requests match on the cleaned path, so a pattern that cleaning would
	// change never matches; in a prefix only the part up to its last "/"
	// is whole segments.
	switch {
	case prefix:
		dir := lit[:strings.LastIndexByte(lit, '/')+1]
		if !isCleanPath(dir) {
			return "", "", c.Errf("pattern %q never matches: requests match on the cleaned path (want %q)",
				p, cleanPath(dir)+lit[len(dir):]+"*")
		}
	case strings.HasPrefix(p, "/") && !isCleanPath(p):
		return "", "", c.Errf("pattern %q never matches: requests match on the cleaned path (want %q)", p, cleanPath(p))
	}
	if stripPath {
		strip = strings.TrimSuffix(lit, "/")
		if strip == "" {
			return "", "", c.Errf("pattern %q strips nothing (use handle)", p)
		}
	}
	return p, strip, nil
}

// cleanPath is path.Clean keeping a trailing slash, as requests are
// matched.
func cleanPath(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func isCleanPath(p string) bool { return cleanPath(p) == p }

// covers reports whether the pattern a matches every path that b matches
// (so a route with b after one with a is never reached), ignoring case as
// matching does. Both are valid patterns. It may miss a case, never claim
// a wrong one.
func covers(a, b string) bool {
	a, b = strings.ToLower(a), strings.ToLower(b)
	if a == "" || a == "/*" || a == "*/*" || a == b { // every cleaned path starts with "/"
		return true
	}
	if b == "" {
		return false
	}
	bk, bLit := patternKind(b)
	// A prefix "/x/*" also matches "/x", which a must match too.
	if bk == matchPrefix && len(bLit) > 1 && strings.HasSuffix(bLit, "/") && !matches(a, bLit[:len(bLit)-1]) {
		return false
	}
	ak, aLit := patternKind(a)
	switch {
	case bk == matchExact:
		return matches(a, bLit)
	case ak == matchContains:
		return strings.Contains(bLit, aLit) // every path b matches holds bLit
	case ak == matchPrefix && bk == matchPrefix:
		return strings.HasPrefix(bLit, aLit)
	case ak == matchSuffix && bk == matchSuffix:
		return strings.HasSuffix(bLit, aLit)
	}
	return false
}

type matchKind int

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchContains
)

// patternKind returns the kind of a valid pattern other than "" and its
// literal part.
func patternKind(p string) (matchKind, string) {
	star0, star1 := strings.HasPrefix(p, "*"), strings.HasSuffix(p, "*")
	lit := strings.TrimSuffix(strings.TrimPrefix(p, "*"), "*")
	switch {
	case star0 && star1:
		return matchContains, lit
	case star0:
		return matchSuffix, lit
	case star1:
		return matchPrefix, lit
	}
	return matchExact, lit
}

// matches reports whether the lower-cased pattern p matches the path
// path, as the proxy matches: a prefix "/x/*" also matches "/x".
func matches(p, path string) bool { return CompilePath(p).Match(path) }

// PathPattern is a compiled Route.Path: what the proxy matches requests
// against, and the parser route against route.
type PathPattern struct {
	any  bool // "" or "*": every path
	kind matchKind
	lit  string // lower-cased
}

// CompilePath compiles a route pattern (Route.Path).
func CompilePath(pattern string) PathPattern {
	p := strings.ToLower(pattern)
	if p == "" || p == "*" {
		return PathPattern{any: true}
	}
	k, lit := patternKind(p)
	return PathPattern{kind: k, lit: lit}
}

// MatchesAll reports whether the pattern matches every path.
func (pp PathPattern) MatchesAll() bool { return pp.any }

// Match reports whether the pattern matches a path as RequestPath returns
// it. A prefix pattern "/x/*" also matches "/x".
func (pp PathPattern) Match(path string) bool {
	switch {
	case pp.any:
		return true
	case pp.kind == matchPrefix:
		return strings.HasPrefix(path, pp.lit) || strings.HasSuffix(pp.lit, "/") && path == pp.lit[:len(pp.lit)-1]
	case pp.kind == matchSuffix:
		return strings.HasSuffix(path, pp.lit)
	case pp.kind == matchContains:
		return strings.Contains(path, pp.lit)
	}
	return path == pp.lit
}

// RequestPath is the path routes match against: the request's decoded path
// cleaned (so "/a/../admin" is "/admin", as a backend resolves it), a
// trailing slash kept, lower-cased (matching ignores case).
func RequestPath(p string) string {
	if p == "" {
		return "/"
	}
	return strings.ToLower(cleanPath(p))
}

// respond reads "respond [STATUS] [BODY]". One argument is the status if
// it is three digits and not quoted, else the body; of two, the status is
// the one that is three unquoted digits, as in "respond 404 Gone" or
// Caddy's "respond Gone 404".
func respond(b *builder, c *Cursor, sc *scope) error {
	r := &Respond{Pos: c.Token().Pos(), Status: 200}
	sc.route.Respond = r
	var args []Token
	for len(args) < 2 && c.NextArg() {
		args = append(args, c.Token())
	}
	if c.CountRemainingArgs() > 0 {
		return c.ArgErr()
	}
	var status, body *Token
	switch {
	case len(args) == 1 && isStatusWord(args[0]):
		status = &args[0]
	case len(args) == 1:
		body = &args[0]
	case len(args) == 2 && isStatusWord(args[0]) && isStatusWord(args[1]):
		return newError(args[0].Pos(), "respond", nil,
			fmt.Sprintf("both %q and %q look like a status (quote the body)", args[0].Text, args[1].Text))
	case len(args) == 2 && isStatusWord(args[0]):
		status, body = &args[0], &args[1]
	case len(args) == 2 && isStatusWord(args[1]):
		status, body = &args[1], &args[0]
	case len(args) == 2:
		return newError(args[0].Pos(), "respond", nil, fmt.Sprintf(
			"neither %q nor %q is a status (want respond [STATUS] [BODY]; quote a body of several words)",
			args[0].Text, args[1].Text))
	}
	if status != nil {
		n, _ := strconv.Atoi(status.Text)
		if n < 200 {
			// 1xx are interim responses: a final one would have to follow.
			return newError(status.Pos(), "respond", nil, fmt.Sprintf("invalid status %q (want 200-999)", status.Text))
		}
		r.Status = n
	}
	if body != nil {
		// RFC 9110 §15.2, §15.3.5, §15.4.5: these responses have no content.
		if body.Text != "" && (r.Status < 200 || r.Status == 204 || r.Status == 304) {
			return newError(body.Pos(), "respond", nil, fmt.Sprintf("status %d does not allow a body", r.Status))
		}
		r.Body = body.Text
		if msg := placeholderError(body.Text, false); msg != "" {
			return newError(body.Pos(), "respond", nil, msg)
		}
	}
	return nil
}

// isStatusWord reports whether t is three unquoted digits.
func isStatusWord(t Token) bool {
	return !t.Quoted && len(t.Text) == 3 && isDigit(t.Text[0]) && isDigit(t.Text[1]) && isDigit(t.Text[2])
}

var redirCodes = []string{"permanent", "temporary"}

// redir reads "redir TO [CODE]": CODE is 300-308, permanent (301) or
// temporary (302, the default).
func redir(b *builder, c *Cursor, sc *scope) error {
	r := &Redir{Pos: c.Token().Pos(), Code: 302}
	sc.route.Redir = r
	if !c.NextArg() {
		return c.ArgErr()
	}
	if err := checkRedirTarget(c); err != nil {
		return err
	}
	r.To = c.Val()
	if !c.NextArg() {
		return nil
	}
	switch code := c.Val(); {
	case code == "permanent":
		r.Code = 301
	case code == "temporary":
		r.Code = 302
	case len(code) == 3 && strings.HasPrefix(code, "30") && '0' <= code[2] && code[2] <= '8':
		r.Code = 300 + int(code[2]-'0')
	default:
		hint := didYouMean(code, redirCodes)
		if hint == "" {
			hint = " (want 300-308, permanent or temporary)"
		}
		return c.Errf("invalid code %q%s", code, hint)
	}
	return nil
}

// redirSample is what each placeholder stands for when a redir target is
// checked.
var redirSample = strings.NewReplacer("{host}", "example.com", "{hostport}", "example.com:8443", "{uri}", "/", "{path}", "/", "{query}", "", "{scheme}", "https")

// checkRedirTarget checks the redir target at the cursor: a path starting
// with "/" or an absolute http:// or https:// URL, once its placeholders
// are filled in. "//host" is refused: it reads as a path but redirects to
// another host.
func checkRedirTarget(c *Cursor) error {
	to := c.Val()
	if to == "" {
		return c.Err("empty target")
	}
	if msg := placeholderError(to, false); msg != "" {
		return c.Err(msg)
	}
	s := redirSample.Replace(to)
	u, err := url.Parse(s)
	valid := err == nil && !strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
	switch {
	case valid && strings.HasPrefix(s, "/"):
		valid = !strings.HasPrefix(s, "//") && !strings.HasPrefix(s, `/\`)
	case valid:
		valid = (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
	}
	if !valid {
		return c.Wrapf(err, "invalid target %q (want a path starting with /, or an http:// or https:// URL)", to)
	}
	return nil
}
