package configs

import (
	"fmt"
	"strings"
	"testing"
)

// siteA returns the site "a.com" of inSite with routes and site-level
// headers.
func siteA(routes []Route, headers ...HeaderOp) Site {
	return Site{
		Pos:       at(1, 1),
		Addresses: []Address{{Pos: at(1, 1), Host: "a.com", Port: 443, Text: "a.com"}},
		TLS:       TLS{Pos: at(1, 1)},
		Routes:    routes,
		Headers:   headers,
	}
}

func TestParseRoutes(t *testing.T) {
	tests := []struct {
		name string
		src  string // directives of inSite
		want Site
	}{
		{
			name: "handle blocks with a site-level handler written first",
			src: `reverse_proxy app:8080
	handle /api/* {
		reverse_proxy api:9000
		header X-Route api
	}
	handle_path /static/* {
		respond "static {path}" 200
	}
	handle_path /old* {
		redir https://new.example.com{uri} permanent
	}
	handle *.php {
		respond 403
	}
	handle */admin/* {
		header Cache-Control no-store
		redir /login
	}
	handle /health {
		respond ok
	}
	header -Server
	header +via roamgate`,
			want: siteA([]Route{
				{Pos: at(3, 2), Path: "/api/*",
					Headers:      []HeaderOp{{Pos: at(5, 3), Name: "X-Route", Value: "api"}},
					ReverseProxy: proxy(at(4, 3), Upstream{Pos: at(4, 17), Addr: "api:9000", Text: "api:9000"})},
				{Pos: at(7, 2), Path: "/static/*", StripPrefix: "/static",
					Respond: &Respond{Pos: at(8, 3), Status: 200, Body: "static {path}"}},
				{Pos: at(10, 2), Path: "/old*", StripPrefix: "/old",
					Redir: &Redir{Pos: at(11, 3), To: "https://new.example.com{uri}", Code: 301}},
				{Pos: at(13, 2), Path: "*.php",
					Respond: &Respond{Pos: at(14, 3), Status: 403}},
				{Pos: at(16, 2), Path: "*/admin/*",
					Headers: []HeaderOp{{Pos: at(17, 3), Name: "Cache-Control", Value: "no-store"}},
					Redir:   &Redir{Pos: at(18, 3), To: "/login", Code: 302}},
				{Pos: at(20, 2), Path: "/health",
					Respond: &Respond{Pos: at(21, 3), Status: 200, Body: "ok"}},
				{Pos: at(2, 2),
					ReverseProxy: proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "app:8080", Text: "app:8080"})},
			},
				HeaderOp{Pos: at(23, 2), Name: "Server", Delete: true},
				HeaderOp{Pos: at(24, 2), Name: "Via", Value: "roamgate", Add: true},
			),
		},
		{
			name: "handle without pattern",
			src:  "handle {\n\t\trespond 200\n\t}",
			want: siteA([]Route{{Pos: at(2, 2), Respond: &Respond{Pos: at(3, 3), Status: 200}}}),
		},
		{
			name: "handle star",
			src:  "handle * { redir https://{host}/ 308 }",
			want: siteA([]Route{{Pos: at(2, 2), Redir: &Redir{Pos: at(2, 13), To: "https://{host}/", Code: 308}}}),
		},
		{
			name: "site-level respond and headers only",
			src:  "header X-Frame-Options DENY\n\trespond \"<h1>{host}</h1>\" 503",
			want: siteA([]Route{{Pos: at(3, 2), Respond: &Respond{Pos: at(3, 2), Status: 503, Body: "<h1>{host}</h1>"}}},
				HeaderOp{Pos: at(2, 2), Name: "X-Frame-Options", Value: "DENY"}),
		},
		{
			name: "handle_path on one line",
			src:  "handle_path /API/v1/* { reverse_proxy b; header x-version 1 }",
			want: siteA([]Route{{Pos: at(2, 2), Path: "/API/v1/*", StripPrefix: "/API/v1",
				Headers:      []HeaderOp{{Pos: at(2, 43), Name: "X-Version", Value: "1"}},
				ReverseProxy: proxy(at(2, 26), Upstream{Pos: at(2, 40), Addr: "b:80", Text: "b"})}}),
		},
		{
			name: "blocks that do not cover each other",
			src: "handle /api { respond 1 }\n\thandle /api2/* { respond 2 }\n\thandle /x/* { respond 3 }\n\t" +
				"handle *.php { respond 4 }\n\thandle *.PHP5 { respond 5 }",
			want: siteA([]Route{
				{Pos: at(2, 2), Path: "/api", Respond: &Respond{Pos: at(2, 16), Status: 200, Body: "1"}},
				{Pos: at(3, 2), Path: "/api2/*", Respond: &Respond{Pos: at(3, 19), Status: 200, Body: "2"}},
				{Pos: at(4, 2), Path: "/x/*", Respond: &Respond{Pos: at(4, 16), Status: 200, Body: "3"}},
				{Pos: at(5, 2), Path: "*.php", Respond: &Respond{Pos: at(5, 17), Status: 200, Body: "4"}},
				{Pos: at(6, 2), Path: "*.PHP5", Respond: &Respond{Pos: at(6, 18), Status: 200, Body: "5"}},
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("Roamfile", []byte(inSite(tt.src)), testEnv)
			if err != nil {
				t.Fatalf("Parse:\n%v", err)
			}
			if d := diffConfig(got, defaults(tt.want)); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestParsePatterns(t *testing.T) {
	tests := []struct {
		directive, pattern string
		path, strip        string // want
	}{
		{"handle", "/", "/", ""},
		{"handle", "/exact", "/exact", ""},
		{"handle", "/dir/", "/dir/", ""},
		{"handle", "/api/*", "/api/*", ""},
		{"handle", "/api*", "/api*", ""},
		{"handle", "/*", "/*", ""},
		{"handle", "*", "", ""},
		{"handle", "*.php", "*.php", ""},
		{"handle", "*/admin/*", "*/admin/*", ""},
		{"handle", "/a/.well-known/*", "/a/.well-known/*", ""},
		{"handle", "/a/.*", "/a/.*", ""},
		{"handle", `"/my docs/*"`, "/my docs/*", ""},
		{"handle", "*/../*", "*/../*", ""},
		{"handle_path", "/api/*", "/api/*", "/api"},
		{"handle_path", "/api*", "/api*", "/api"},
		{"handle_path", "/API/V1/*", "/API/V1/*", "/API/V1"},
		{"handle_path", "/a/b*", "/a/b*", "/a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.directive+" "+tt.pattern, func(t *testing.T) {
			src := inSite(tt.directive + " " + tt.pattern + " {\n\t\trespond 204\n\t}")
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			want := Route{Pos: at(2, 2), Path: tt.path, StripPrefix: tt.strip, Respond: &Respond{Pos: at(3, 3), Status: 204}}
			if d := diffRoute(cfg.Sites[0].Routes[0], want); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestParseRespond(t *testing.T) {
	tests := []struct {
		args   string
		status int
		body   string
	}{
		{"", 200, ""},
		{"404", 404, ""},
		{"999", 999, ""},
		{"Gone", 200, "Gone"},
		{"20", 200, "20"},
		{"2000", 200, "2000"},
		{`"404"`, 200, "404"},
		{"410 Gone", 410, "Gone"},
		{"Gone 410", 410, "Gone"},
		{`"404" 200`, 200, "404"},
		{`200 "404"`, 200, "404"},
		{`"Not here, {host}" 404`, 404, "Not here, {host}"},
		{`204 ""`, 204, ""},
		{"`{\"ok\":true} {uri}`", 200, `{"ok":true} {uri}`},
		{`"a {} { b } {color:red} {{query}}"`, 200, "a {} { b } {color:red} {{query}}"},
		{"\"line 1\nline 2\"", 200, "line 1\nline 2"},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			src := inSite(strings.TrimSpace("respond " + tt.args))
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			want := &Respond{Pos: at(2, 2), Status: tt.status, Body: tt.body}
			if got := cfg.Sites[0].Routes[0].Respond; *got != *want {
				t.Errorf("Parse(%q) respond = %+v, want %+v", src, *got, *want)
			}
		})
	}
}

func TestParseRedir(t *testing.T) {
	tests := []struct {
		args string
		to   string
		code int
	}{
		{"/", "/", 302},
		{"/login?next={uri}", "/login?next={uri}", 302},
		{"https://example.com", "https://example.com", 302},
		{"http://example.com:8080/x", "http://example.com:8080/x", 302},
		{"https://{host}{uri}", "https://{host}{uri}", 302},
		// Regression (issue 13): {hostport} was refused, and {host} loses the port.
		{"https://{hostport}/new{uri}", "https://{hostport}/new{uri}", 302},
		{"{scheme}://www.{host}{path}?{query}", "{scheme}://www.{host}{path}?{query}", 302},
		{"{uri}", "{uri}", 302},
		{"/x permanent", "/x", 301},
		{"/x temporary", "/x", 302},
		{"/x 300", "/x", 300},
		{"/x 307", "/x", 307},
		{"/x 308", "/x", 308},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			src := inSite("redir " + tt.args)
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			want := &Redir{Pos: at(2, 2), To: tt.to, Code: tt.code}
			if got := cfg.Sites[0].Routes[0].Redir; *got != *want {
				t.Errorf("Parse(%q) redir = %+v, want %+v", src, *got, *want)
			}
		})
	}
}

func TestParseRouteErrors(t *testing.T) {
	site := inSite
	const noHandler = "Roamfile:1:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)"
	testParseErrors(t, []errorTest{
		// handle and handle_path.
		{"handle missing block", site("handle /a"), `Roamfile:2:9: handle: missing block (want handle PATTERN { ... } with a handler inside)`},
		{"handle without pattern or block", site("handle"), `Roamfile:2:2: handle: missing block (want handle PATTERN { ... } with a handler inside)`},
		{"handle empty block", site("handle /a {\n\t}"), `Roamfile:2:2: handle: no handler (want reverse_proxy, respond or redir)`},
		{"handle only header", site("handle /a {\n\t\theader X y\n\t}"), `Roamfile:2:2: handle: no handler (want reverse_proxy, respond or redir)`},
		{"handle_path empty block", site("handle_path /a/* { }"), `Roamfile:2:2: handle_path: no handler (want reverse_proxy, respond or redir)`},
		{"handle two patterns", site("handle /a /b {\n\t\trespond 1\n\t}"), `Roamfile:2:12: handle: unexpected argument "/b"`},
		{"handle relative pattern", site("handle api/* { respond 1 }"), `Roamfile:2:9: handle: invalid pattern "api/*" (want a path starting with / or *, as in /api/*)`},
		{"handle empty pattern", site(`handle "" { respond 1 }`), `Roamfile:2:9: handle: invalid pattern "" (want a path starting with / or *, as in /api/*)`},
		{"handle inner star", site("handle /a/*/b { respond 1 }"), `Roamfile:2:9: handle: invalid pattern "/a/*/b" (* only at the start or the end)`},
		{"handle inner star in suffix", site("handle *a*b { respond 1 }"), `Roamfile:2:9: handle: invalid pattern "*a*b" (* only at the start or the end)`},
		{"handle two stars", site("handle ** { respond 1 }"), `Roamfile:2:9: handle: invalid pattern "**" (use * or no pattern to match every path)`},
		{"handle unclean exact", site("handle /a/../b { respond 1 }"), `Roamfile:2:9: handle: pattern "/a/../b" never matches: requests match on the cleaned path (want "/b")`},
		{"handle double slash", site("handle //a { respond 1 }"), `Roamfile:2:9: handle: pattern "//a" never matches: requests match on the cleaned path (want "/a")`},
		{"handle unclean prefix", site("handle /a//* { respond 1 }"), `Roamfile:2:9: handle: pattern "/a//*" never matches: requests match on the cleaned path (want "/a/*")`},
		{"handle dot segment prefix", site("handle /a/./b* { respond 1 }"), `Roamfile:2:9: handle: pattern "/a/./b*" never matches: requests match on the cleaned path (want "/a/b*")`},
		{"handle_path missing pattern", site("handle_path {\n\t\trespond 1\n\t}"), `Roamfile:2:2: handle_path: missing argument`},
		{"handle_path exact", site("handle_path /api { respond 1 }"), `Roamfile:2:14: handle_path: pattern "/api" is not a prefix (want one such as /api/*)`},
		{"handle_path suffix", site("handle_path *.php { respond 1 }"), `Roamfile:2:14: handle_path: pattern "*.php" is not a prefix (want one such as /api/*)`},
		{"handle_path substring", site("handle_path */a/* { respond 1 }"), `Roamfile:2:14: handle_path: pattern "*/a/*" is not a prefix (want one such as /api/*)`},
		{"handle_path star", site("handle_path * { respond 1 }"), `Roamfile:2:14: handle_path: pattern "*" is not a prefix (want one such as /api/*)`},
		{"handle_path root", site("handle_path /* { respond 1 }"), `Roamfile:2:14: handle_path: pattern "/*" strips nothing (use handle)`},
		{"handle in handle", site("handle /a {\n\t\thandle /b {\n\t\t\trespond 1\n\t\t}\n\t}"), `Roamfile:3:3: handle: handle is not allowed in a handle block (handle blocks do not nest)`},
		{"handle_path in handle_path", site("handle_path /a/* { handle_path /b/* { respond 1 } }"), `Roamfile:2:21: handle_path: handle_path is not allowed in a handle_path block (handle blocks do not nest)`},
		{"tls in handle", site("handle /a {\n\t\ttls internal\n\t\trespond 1\n\t}"), `Roamfile:3:3: handle: tls is not allowed in a handle block (set it at site level)`},
		{"global option in handle", site("handle /a {\n\t\thttps_port 1\n\t\trespond 1\n\t}"), `Roamfile:3:3: handle: https_port is a global option; set it in the global options block at the top of the file`},
		{"unknown directive in handle", site("handle /a {\n\t\tfile_server\n\t}"), "Roamfile:2:2: handle: no handler (want reverse_proxy, respond or redir)\n" +
			`Roamfile:3:3: handle: unknown directive "file_server"`},
		{"misspelt handler in handle", site("handle /a {\n\t\trevers_proxy b\n\t}"), `Roamfile:3:3: handle: unknown directive "revers_proxy" (did you mean reverse_proxy?)`},
		{"misspelt handle", site("hadle /a {\n\t\trespond 1\n\t}\n\treverse_proxy b"), `Roamfile:2:2: unknown directive "hadle" (did you mean handle?)`},
		{"misspelt handle_path alone", site("handle_pat /a/* {\n\t\trespond 1\n\t}"), `Roamfile:2:2: unknown directive "handle_pat" (did you mean handle_path?)`},
		{"Caddy route alone", site("route /a {\n\t\trespond 1\n\t}"), noHandler + "\n" + `Roamfile:2:2: unknown directive "route"`},
		{"two handlers in handle", site("handle /a {\n\t\treverse_proxy b\n\t\trespond 1\n\t}"), `Roamfile:4:3: respond: handler already set by reverse_proxy at Roamfile:3:3 (one handler per handle block)`},
		{"same handler twice in handle_path", site("handle_path /a/* {\n\t\trespond 1\n\t\trespond 2\n\t}"), `Roamfile:4:3: respond: already set at Roamfile:3:3 (one handler per handle_path block)`},
		{"two site-level handlers", site("reverse_proxy b\n\tredir /x"), `Roamfile:3:2: redir: handler already set by reverse_proxy at Roamfile:2:2 (use handle blocks for more than one handler)`},
		{"error inside handle block", site("handle /a {\n\t\treverse_proxy b:0\n\t}"), `Roamfile:3:17: reverse_proxy: upstream "b:0": invalid port "0" (want 1-65535)`},
		{"bad pattern and bad block", site("handle api {\n\t\trespond 1 2 3\n\t}"), `Roamfile:2:9: handle: invalid pattern "api" (want a path starting with / or *, as in /api/*)` + "\n" +
			`Roamfile:3:15: respond: unexpected argument "3"`},
		{"bad handle only", site("handle api {\n\t\trespond 1\n\t}"), `Roamfile:2:9: handle: invalid pattern "api" (want a path starting with / or *, as in /api/*)`},
		{"only site-level header", site("header X y"), noHandler},

		// Routes that an earlier one leaves nothing to.
		{"after catch-all handle", site("handle {\n\t\trespond 1\n\t}\n\thandle /a {\n\t\trespond 2\n\t}"), `Roamfile:5:2: handle: unreachable: handle at Roamfile:2:2 matches every path first`},
		{"site-level handler after catch-all", site("reverse_proxy b\n\thandle * {\n\t\trespond 2\n\t}"), `Roamfile:2:2: reverse_proxy: unreachable: handle at Roamfile:3:2 matches every path first (a handler outside handle blocks comes after them)`},
		{"same pattern", site("handle /a/* { respond 1 }\n\thandle_path /A/* { respond 2 }"), `Roamfile:3:2: handle_path: unreachable: handle "/a/*" at Roamfile:2:2 matches all of its paths first`},
		{"longer prefix after prefix", site("handle_path /api/* { respond 1 }\n\thandle /api/v2/* { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle_path "/api/*" at Roamfile:2:2 matches all of its paths first`},
		{"exact after prefix", site("handle /api* { respond 1 }\n\thandle /api/users { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle "/api*" at Roamfile:2:2 matches all of its paths first`},
		{"prefix's own directory after prefix", site("handle /api/* { respond 1 }\n\thandle /api { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle "/api/*" at Roamfile:2:2 matches all of its paths first`},
		{"exact after suffix", site("handle *.php { respond 1 }\n\thandle /index.php { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle "*.php" at Roamfile:2:2 matches all of its paths first`},
		{"suffix after suffix", site("handle *.php { respond 1 }\n\thandle */admin.PHP { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle "*.php" at Roamfile:2:2 matches all of its paths first`},
		{"prefix after substring", site("handle */admin/* { respond 1 }\n\thandle /x/admin/y* { respond 2 }"), `Roamfile:3:2: handle: unreachable: handle "*/admin/*" at Roamfile:2:2 matches all of its paths first`},
		{"site-level handler after root prefix", site("handle /* { respond 1 }\n\trespond 2"), `Roamfile:3:2: respond: unreachable: handle "/*" at Roamfile:2:2 matches all of its paths first (a handler outside handle blocks comes after them)`},

		// respond.
		{"respond two statuses", site("respond 200 404"), `Roamfile:2:10: respond: both "200" and "404" look like a status (quote the body)`},
		{"respond no status of two", site("respond Not Found"), `Roamfile:2:10: respond: neither "Not" nor "Found" is a status (want respond [STATUS] [BODY]; quote a body of several words)`},
		{"respond three", site("respond 404 Not Found"), `Roamfile:2:18: respond: unexpected argument "Found"`},
		{"respond status below 200", site("respond 099"), `Roamfile:2:10: respond: invalid status "099" (want 200-999)`},
		{"respond status 000 with body", site("respond gone 000"), `Roamfile:2:15: respond: invalid status "000" (want 200-999)`},
		{"respond 204 body", site("respond 204 body"), `Roamfile:2:14: respond: status 204 does not allow a body`},
		{"respond 304 body", site("respond Cached 304"), `Roamfile:2:10: respond: status 304 does not allow a body`},
		{"respond 1xx", site("respond 103 hints"), `Roamfile:2:10: respond: invalid status "103" (want 200-999)`},
		{"respond unknown placeholder", site(`respond "{http.request.host}" 200`), `Roamfile:2:10: respond: unknown placeholder "{http.request.host}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})`},
		{"respond upstream placeholder", site("respond {upstream_hostport}"), `Roamfile:2:10: respond: placeholder {upstream_hostport} is only known in header_up`},
		{"respond block", site("respond 200 {\n\t}"), `Roamfile:2:14: respond: unexpected block`},

		// redir.
		{"redir missing", site("redir"), `Roamfile:2:2: redir: missing argument`},
		{"redir empty", site(`redir ""`), `Roamfile:2:8: redir: empty target`},
		{"redir relative", site("redir login"), `Roamfile:2:8: redir: invalid target "login" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir other host by path", site("redir //evil.example"), `Roamfile:2:8: redir: invalid target "//evil.example" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir backslash", site(`redir /\evil.example`), `Roamfile:2:8: redir: invalid target "/\\evil.example" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir other scheme", site("redir ftp://a/b"), `Roamfile:2:8: redir: invalid target "ftp://a/b" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir no host", site("redir https:///x"), `Roamfile:2:8: redir: invalid target "https:///x" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir host placeholder only", site("redir {host}/x"), `Roamfile:2:8: redir: invalid target "{host}/x" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir space", site(`redir "/a b"`), `Roamfile:2:8: redir: invalid target "/a b" (want a path starting with /, or an http:// or https:// URL)`},
		{"redir unknown placeholder", site("redir https://{hots}/"), `Roamfile:2:8: redir: unknown placeholder "{hots}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})`},
		{"redir code out of range", site("redir /x 309"), `Roamfile:2:11: redir: invalid code "309" (want 300-308, permanent or temporary)`},
		{"redir code 4xx", site("redir /x 401"), `Roamfile:2:11: redir: invalid code "401" (want 300-308, permanent or temporary)`},
		{"redir code misspelt", site("redir /x permanant"), `Roamfile:2:11: redir: invalid code "permanant" (did you mean permanent?)`},
		{"redir code html", site("redir /x html"), `Roamfile:2:11: redir: invalid code "html" (want 300-308, permanent or temporary)`},
		{"redir extra", site("redir /x 301 y"), `Roamfile:2:15: redir: unexpected argument "y"`},
	})
}

// TestParseReportsAllRouteErrors checks a file with errors in and around
// handle blocks: each is reported once, in file order.
func TestParseReportsAllRouteErrors(t *testing.T) {
	src := `a.com {
	respond 200
	handle /api/* {
		reverse_proxy b {
			lb_policy ip_hash
		}
		respond 404
	}
	handle_path /api/v2/* {
		redir login
	}
	handle /x {
	}
	reverse_proxy c
	header Connection close
}
b.com {
	handle api {
		respond 1
	}
	header X {xyz}
}
c.com {
	header X y
}
`
	want := []string{
		`Roamfile:5:14: reverse_proxy: lb_policy: ip_hash is not supported: the client address changes when a QUIC client migrates (use cookie or header)`,
		`Roamfile:7:3: respond: handler already set by reverse_proxy at Roamfile:4:3 (one handler per handle block)`,
		`Roamfile:9:2: handle_path: unreachable: handle "/api/*" at Roamfile:3:2 matches all of its paths first`,
		`Roamfile:10:9: redir: invalid target "login" (want a path starting with /, or an http:// or https:// URL)`,
		`Roamfile:12:2: handle: no handler (want reverse_proxy, respond or redir)`,
		`Roamfile:14:2: reverse_proxy: handler already set by respond at Roamfile:2:2 (use handle blocks for more than one handler)`,
		`Roamfile:15:9: header: Connection is managed by the proxy`,
		`Roamfile:18:9: handle: invalid pattern "api" (want a path starting with / or *, as in /api/*)`,
		`Roamfile:21:11: header: unknown placeholder "{xyz}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})`,
		`Roamfile:23:1: site has no handler (want reverse_proxy, respond, redir or tunnel, at site level or in a handle block)`,
	}
	_, err := Parse("Roamfile", []byte(src), testEnv)
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	checkErrorPositions(t, []byte(src), err)
}

func TestCovers(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"", "", true},
		{"", "/a", true},
		{"/a", "", false},
		{"/a", "/A", true},
		{"/a", "/a/", false},
		{"/a/*", "/a", true},
		{"/a/*", "/a/", true},
		{"/a/*", "/a/b", true},
		{"/a/*", "/a/b*", true},
		{"/a/*", "/ab", false},
		{"/a*", "/ab", true},
		{"/a*", "/a/*", true},
		{"/a/*", "/a*", false},
		{"/a*", "*.a", false},
		{"*.php", "/x.php", true},
		{"*.php", "*x.php", true},
		{"*.php", "/x.php/*", false},
		{"*.php", "*.php5", false},
		{"*x.php", "*.php", false},
		{"*/a/*", "/b/a/c", true},
		{"*/a/*", "/b/a/*", false}, // "/b/a/*" also matches "/b/a"
		{"*/a/*", "/b/a/c*", true},
		{"*/a/*", "*/a/b", true},
		{"*/a/*", "*/b/a/c/*", true},
		{"*/a/*", "/b/*", false},
		{"/x", "/x/*", false},
		{"/x", "*x", false},
		{"/*", "", true},
		{"/*", "*.php", true},
		{"*/*", "", true},
		{"*/", "", false},
		{"/a*", "/a/*", true},
		{"*/admin/*", "/x/admin/*", false}, // "/x/admin/*" also matches "/x/admin"
		{"*/admin*", "/x/admin/*", true},
		{"*admin", "/x/admin/*", false},
		{"/x/*", "/x/admin/*", true},
		{"/x*", "/x/*", true},
		{"/x/", "/x/*", false},
		{"*.php", "/a/*", false},
	}
	for _, tt := range tests {
		if got := covers(tt.a, tt.b); got != tt.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestCoversIsSound checks covers against matches on sample paths: when a
// covers b, every path b matches, a matches.
func TestCoversIsSound(t *testing.T) {
	patterns := []string{"", "/", "/*", "*/*", "*/", "/a", "/a/", "/a/*", "/a*", "/a/b", "/a/b/*", "/ab*", "*.php",
		"*b.php", "*/a/*", "*/a*", "*a", "*/b/*", "/b/a/*", "/b/a/c*", "/x/a/*", "*/a/b*", "/a.php", "/A/*"}
	paths := []string{"/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/ab", "/abc", "/b", "/b/a", "/b/a/", "/b/a/c",
		"/x/a", "/x/a/b", "/a.php", "/ab.php", "/b.php", "/a/b.php", "/c/a/b.php", "/x/a/bc"}
	for _, a := range patterns {
		for _, b := range patterns {
			if !covers(a, b) {
				continue
			}
			for _, p := range paths {
				if matches(strings.ToLower(b), p) && !matches(strings.ToLower(a), p) {
					t.Errorf("covers(%q, %q), but %q matches only the second", a, b, p)
				}
			}
		}
	}
}

func ExampleParse_routes() {
	cfg, err := Parse("Roamfile", []byte(`example.com {
	reverse_proxy app:8080
	handle_path /static/* {
		reverse_proxy files:9000
	}
	handle /old/* {
		redir https://new.example.com{uri} permanent
	}
}`), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range cfg.Sites[0].Routes {
		fmt.Printf("%-10q strip %-9q %v %v %v\n", r.Path, r.StripPrefix, r.ReverseProxy != nil, r.Respond != nil, r.Redir != nil)
	}
	// Output:
	// "/static/*" strip "/static" true false false
	// "/old/*"   strip ""        false false true
	// ""         strip ""        true false false
}
