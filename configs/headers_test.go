package configs

import "testing"

func TestParseHeader(t *testing.T) {
	tests := []struct {
		args string
		want HeaderOp // Pos is set by the test
	}{
		{"X-Frame-Options DENY", HeaderOp{Name: "X-Frame-Options", Value: "DENY"}},
		{"x-frame-options DENY", HeaderOp{Name: "X-Frame-Options", Value: "DENY"}},
		{`+Link "</a.css>; rel=preload"`, HeaderOp{Name: "Link", Value: "</a.css>; rel=preload", Add: true}},
		{"-Server", HeaderOp{Name: "Server", Delete: true}},
		{"-x-powered-by", HeaderOp{Name: "X-Powered-By", Delete: true}},
		{`X-Empty ""`, HeaderOp{Name: "X-Empty"}},
		{"WWW-Authenticate Basic", HeaderOp{Name: "Www-Authenticate", Value: "Basic"}},
		{"X_Under_Score 1", HeaderOp{Name: "X_under_score", Value: "1"}},
		{"Strict-Transport-Security \"max-age=31536000;\tincludeSubDomains\"",
			HeaderOp{Name: "Strict-Transport-Security", Value: "max-age=31536000;\tincludeSubDomains"}},
		{"X-Where {scheme}://{host}{uri}?{query}&{path}", HeaderOp{Name: "X-Where", Value: "{scheme}://{host}{uri}?{query}&{path}"}},
		{`X-JSON {"a":{}}`, HeaderOp{Name: "X-Json", Value: `{"a":{}}`}},
		{`X-Env {$HOST}`, HeaderOp{Name: "X-Env", Value: "example.com"}},
		{"+Via roamgate", HeaderOp{Name: "Via", Value: "roamgate", Add: true}},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			src := inSite("header " + tt.args + "\n\trespond 200")
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			want := tt.want
			want.Pos = at(2, 2)
			if got := cfg.Sites[0].Headers; len(got) != 1 || got[0] != want {
				t.Errorf("Parse(%q) headers = %+v, want [%+v]", src, got, want)
			}
		})
	}
}

// TestParseHeaderUpDown checks header_up and header_down, which read like
// header; only header_up knows {upstream_hostport} and may set Host.
func TestParseHeaderUpDown(t *testing.T) {
	src := inSite(`reverse_proxy b {
		header_up Host {upstream_hostport}
		header_up +X-Forwarded-Host {host}
		header_up X-Backend "{upstream_hostport} for {scheme}://{host}"
		header_up -Cookie
		header_down -server
		header_down +Set-Cookie "a=1; Secure"
	}`)
	cfg, err := Parse("Roamfile", []byte(src), testEnv)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	want := proxy(at(2, 2), Upstream{Pos: at(2, 16), Addr: "b:80", Text: "b"})
	want.HeaderUp = []HeaderOp{
		{Pos: at(3, 3), Name: "Host", Value: "{upstream_hostport}"},
		{Pos: at(4, 3), Name: "X-Forwarded-Host", Value: "{host}", Add: true},
		{Pos: at(5, 3), Name: "X-Backend", Value: "{upstream_hostport} for {scheme}://{host}"},
		{Pos: at(6, 3), Name: "Cookie", Delete: true},
	}
	want.HeaderDown = []HeaderOp{
		{Pos: at(7, 3), Name: "Server", Delete: true},
		{Pos: at(8, 3), Name: "Set-Cookie", Value: "a=1; Secure", Add: true},
	}
	if d := diffRoute(cfg.Sites[0].Routes[0], Route{Pos: at(2, 2), ReverseProxy: want}); d != "" {
		t.Error(d)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	site := func(directives string) string { return inSite(directives + "\n\trespond 200") }
	rp := func(sub string) string { return inSite("reverse_proxy b {\n\t\t" + sub + "\n\t}") }
	const (
		want   = " (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})"
		wantUp = " (want {host}, {hostport}, {uri}, {path}, {query}, {scheme}, {upstream_hostport})"
	)
	testParseErrors(t, []errorTest{
		{"header missing", site("header"), `Roamfile:2:2: header: missing argument`},
		{"header missing value", site("header X-A"), `Roamfile:2:9: header: missing value for X-A (want header NAME VALUE, or header -NAME to delete)`},
		{"add missing value", site("header +x-a"), `Roamfile:2:9: header: missing value for X-A (want header NAME VALUE, or header -NAME to delete)`},
		{"header extra", site("header X-A b c"), `Roamfile:2:15: header: unexpected argument "c"`},
		{"header unquoted semicolon", site("header +Link </a.css>; rel=preload"), `Roamfile:2:25: unknown directive "rel=preload"`},
		{"delete with value", site("header -X-A b"), `Roamfile:2:14: header: unexpected argument "b"`},
		{"header block", site("header X-A b {\n\t}"), `Roamfile:2:15: header: unexpected block`},
		{"header block form", site("header {\n\t\tX-A b\n\t}"), `Roamfile:2:2: header: missing argument`},
		{"name with space", site(`header "X A" b`), `Roamfile:2:9: header: invalid header name "X A"`},
		{"name with colon", site("header X-A: b"), `Roamfile:2:9: header: invalid header name "X-A:"`},
		{"pseudo-header", site("header :status 200"), `Roamfile:2:9: header: invalid header name ":status"`},
		{"empty name", site(`header "" b`), `Roamfile:2:9: header: invalid header name ""`},
		{"lone minus", site("header -"), `Roamfile:2:9: header: invalid header name ""`},
		{"non-ASCII name", site("header Ünicode b"), `Roamfile:2:9: header: invalid header name "Ünicode"`},
		{"Connection", site("header Connection close"), `Roamfile:2:9: header: Connection is managed by the proxy`},
		{"delete Transfer-Encoding", site("header -transfer-encoding"), `Roamfile:2:9: header: transfer-encoding is managed by the proxy`},
		{"add Content-Length", site("header +Content-Length 5"), `Roamfile:2:9: header: Content-Length is managed by the proxy`},
		{"Upgrade", site("header Upgrade h2c"), `Roamfile:2:9: header: Upgrade is managed by the proxy`},
		{"Keep-Alive", site("header Keep-Alive timeout=5"), `Roamfile:2:9: header: Keep-Alive is managed by the proxy`},
		{"TE", site("header TE trailers"), `Roamfile:2:9: header: TE is managed by the proxy`},
		{"Trailer", site("header Trailer X"), `Roamfile:2:9: header: Trailer is managed by the proxy`},
		{"Proxy-Connection", site("header -Proxy-Connection"), `Roamfile:2:9: header: Proxy-Connection is managed by the proxy`},
		{"Host in header", site("header Host a"), `Roamfile:2:9: header: Host is a request header (want header_up Host VALUE in reverse_proxy)`},
		{"value with newline", site("header X-A \"a\nb\""), `Roamfile:2:13: header: invalid value "a\nb" for X-A (no control characters)`},
		{"value with NUL", site("header X-A \"a\x00b\""), `Roamfile:2:13: header: invalid value "a\x00b" for X-A (no control characters)`},
		{"unknown placeholder", site("header X-A {xyz}"), `Roamfile:2:13: header: unknown placeholder "{xyz}"` + want},
		{"Caddy placeholder", site("header X-A {http.request.host}"), `Roamfile:2:13: header: unknown placeholder "{http.request.host}"` + want},
		{"Caddy header placeholder", site("header X-A {>Referer}"), `Roamfile:2:13: header: unknown placeholder "{>Referer}"` + want},
		{"placeholder case", site("header X-A {Host}"), `Roamfile:2:13: header: unknown placeholder "{Host}"` + want},
		{"second placeholder unknown", site("header X-A {host}{hots}"), `Roamfile:2:13: header: unknown placeholder "{hots}"` + want},
		{"upstream placeholder in header", site("header X-A {upstream_hostport}"), `Roamfile:2:13: header: placeholder {upstream_hostport} is only known in header_up`},
		{"header in handle", inSite("handle /a {\n\t\trespond 1\n\t\theader -Connection\n\t}"), `Roamfile:4:10: header: Connection is managed by the proxy`},

		{"header_up missing", rp("header_up"), `Roamfile:3:3: reverse_proxy: header_up: missing argument`},
		{"header_up missing value", rp("header_up X-A"), `Roamfile:3:13: reverse_proxy: header_up: missing value for X-A (want header_up NAME VALUE, or header_up -NAME to delete)`},
		{"header_up extra", rp("header_up -X-A b"), `Roamfile:3:18: reverse_proxy: header_up: unexpected argument "b"`},
		{"header_up bad name", rp("header_up X/A b"), `Roamfile:3:13: reverse_proxy: header_up: invalid header name "X/A"`},
		{"header_up Connection", rp("header_up Connection keep-alive"), `Roamfile:3:13: reverse_proxy: header_up: Connection is managed by the proxy`},
		{"header_up delete Host", rp("header_up -Host"), `Roamfile:3:13: reverse_proxy: header_up: Host can only be set (want header_up Host VALUE)`},
		{"header_up add Host", rp("header_up +host a"), `Roamfile:3:13: reverse_proxy: header_up: Host can only be set (want header_up Host VALUE)`},
		{"header_up unknown placeholder", rp("header_up X-A {upstream}"), `Roamfile:3:17: reverse_proxy: header_up: unknown placeholder "{upstream}"` + wantUp},
		{"header_down Host", rp("header_down Host a"), `Roamfile:3:15: reverse_proxy: header_down: Host is a request header (want header_up Host VALUE in reverse_proxy)`},
		{"header_down Trailer", rp("header_down -Trailer"), `Roamfile:3:15: reverse_proxy: header_down: Trailer is managed by the proxy`},
		{"header_down upstream placeholder", rp("header_down X-A {upstream_hostport}"), `Roamfile:3:19: reverse_proxy: header_down: placeholder {upstream_hostport} is only known in header_up`},
		{"header_down block", rp("header_down X-A b {\n\t\t}"), `Roamfile:3:21: reverse_proxy: header_down: unexpected block`},
	})
}

func TestPlaceholderError(t *testing.T) {
	tests := []struct {
		s    string
		up   bool
		want string
	}{
		{"", false, ""},
		{"{host}{hostport}{uri}{path}{query}{scheme}", false, ""},
		{"{upstream_hostport}", true, ""},
		{"{upstream_hostport}", false, "placeholder {upstream_hostport} is only known in header_up"},
		{"{}", false, ""},
		{"{ host }", false, ""},
		{"{{host}}", false, ""},
		{"{host", false, ""},
		{"host}", false, ""},
		{`{"a":1}`, false, ""},
		{"a{color:red}", false, ""},
		{"{x}", true, `unknown placeholder "{x}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme}, {upstream_hostport})`},
		{"{a.b-c_d>e}", false, `unknown placeholder "{a.b-c_d>e}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})`},
		{"{{x}}", false, `unknown placeholder "{x}" (want {host}, {hostport}, {uri}, {path}, {query}, {scheme})`},
	}
	for _, tt := range tests {
		if got := placeholderError(tt.s, tt.up); got != tt.want {
			t.Errorf("placeholderError(%q, %v) = %q, want %q", tt.s, tt.up, got, tt.want)
		}
	}
}

func TestValidToken(t *testing.T) {
	for s, want := range map[string]bool{
		"X-A": true, "x_a": true, "!#$%&'*+-.^_`|~09az": true,
		"": false, "a b": false, "a:b": false, "a/b": false, "a=b": false, "(a)": false, "é": false, "a\x7f": false,
	} {
		if got := validToken(s); got != want {
			t.Errorf("validToken(%q) = %v, want %v", s, got, want)
		}
	}
}
