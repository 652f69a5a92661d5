package configs

import (
	"fmt"
	"net/textproto"
	"slices"
	"strings"
)

// managedHeaders are the hop-by-hop and framing fields (RFC 9110 §7.6.1,
// §6.4): the proxy writes them for each connection and protocol, so no
// header directive may touch them. Canonical forms.
var managedHeaders = []string{
	"Connection", "Content-Length", "Keep-Alive", "Proxy-Connection", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade",
}

// headerDirective reads "header [+|-]NAME [VALUE]", a change to the
// responses of its site or handle block.
func headerDirective(b *builder, c *Cursor, sc *scope) error {
	op, err := parseHeaderOp(c, false)
	if err != nil {
		return err
	}
	*sc.headers = append(*sc.headers, op)
	return nil
}

// parseHeaderOp reads, with the cursor on header, header_up or
// header_down (up), the rest of its line:
//
//	NAME VALUE    set
//	+NAME VALUE   add
//	-NAME         delete
//
// Only header_up may name Host, and only to set it.
func parseHeaderOp(c *Cursor, up bool) (HeaderOp, error) {
	directive, prefix := c.Val(), c.linePrefix()
	op := HeaderOp{Pos: c.Token().Pos()}
	if !c.NextArg() {
		return op, c.ArgErr()
	}
	name := c.Val()
	switch {
	case strings.HasPrefix(name, "+"):
		op.Add, name = true, name[1:]
	case strings.HasPrefix(name, "-"):
		op.Delete, name = true, name[1:]
	}
	if !validToken(name) {
		return op, c.Errf("%sinvalid header name %q", prefix, name)
	}
	op.Name = textproto.CanonicalMIMEHeaderKey(name)
	switch {
	case slices.Contains(managedHeaders, op.Name):
		return op, c.Errf("%s%s is managed by the proxy", prefix, name)
	case op.Name == "Host" && !up:
		return op, c.Errf("%sHost is a request header (want header_up Host VALUE in reverse_proxy)", prefix)
	case op.Name == "Host" && (op.Add || op.Delete):
		return op, c.Errf("%sHost can only be set (want header_up Host VALUE)", prefix)
	case op.Delete:
		return op, c.endOfLine()
	}
	if !c.NextArg() {
		return op, c.Errf("%smissing value for %s (want %s NAME VALUE, or %s -NAME to delete)",
			prefix, op.Name, directive, directive)
	}
	op.Value = c.Val()
	if strings.ContainsFunc(op.Value, isControl) {
		return op, c.Errf("%sinvalid value %q for %s (no control characters)", prefix, op.Value, op.Name)
	}
	if msg := placeholderError(op.Value, up); msg != "" {
		return op, c.Err(prefix + msg)
	}
	return op, c.endOfLine()
}

// validToken reports whether s is an RFC 9110 §5.6.2 token, as header
// names and cookie names (RFC 6265 §4.1.1) are.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !isLetter(ch) && !isDigit(ch) && !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(ch)) {
			return false
		}
	}
	return true
}

// isControl reports whether r is a control character other than a tab,
// which no header value may hold (RFC 9110 §5.5).
func isControl(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }

// placeholders are what header values, respond bodies and redir targets may
// hold; header_up also knows upstreamPlaceholder. {host} is the request's
// host without its port, {hostport} the host with the port the client
// named (as Caddy's {hostport}).
var placeholders = []string{"{host}", "{hostport}", "{uri}", "{path}", "{query}", "{scheme}"}

const upstreamPlaceholder = "{upstream_hostport}"

// placeholderError describes the first placeholder in s that is not
// known, or returns "". A placeholder is "{" and one or more letters,
// digits, '_', '.', '-' or '>' up to "}": Caddy's {http.request.host} and
// {>Header} are refused, not left as text, while "{}", "{ a }" and JSON or
// CSS such as {"a":1} and {color:red} are text. up (header_up) allows
// upstreamPlaceholder.
func placeholderError(s string, up bool) string {
	for i := 0; i < len(s); i++ {
		if s[i] != '{' {
			continue
		}
		j := i + 1
		for j < len(s) && isPlaceholderByte(s[j]) {
			j++
		}
		if j == i+1 || j == len(s) || s[j] != '}' {
			continue
		}
		switch ph := s[i : j+1]; {
		case ph == upstreamPlaceholder && up:
		case ph == upstreamPlaceholder:
			return "placeholder " + ph + " is only known in header_up"
		case !slices.Contains(placeholders, ph):
			want := strings.Join(placeholders, ", ")
			if up {
				want += ", " + upstreamPlaceholder
			}
			return fmt.Sprintf("unknown placeholder %q (want %s)", ph, want)
		}
		i = j
	}
	return ""
}

func isPlaceholderByte(ch byte) bool {
	return isLetter(ch) || isDigit(ch) || ch == '_' || ch == '.' || ch == '-' || ch == '>'
}
