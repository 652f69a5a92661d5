package configs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// clientAuthTLS is a tls directive that makes a tunnel without tokens
// valid.
const clientAuthTLS = "tls { client_auth { trusted_ca_cert_file ca.pem } }"

func TestParseTunnel(t *testing.T) {
	// The site starts at line 1 and its first directive is on line 2 at
	// column 2 (inSite).
	tests := []struct {
		name       string
		directives string
		want       *Tunnel
		routes     int // routes the site has besides the tunnel
	}{
		{name: "token", directives: "tunnel 127.0.0.1:22 {\n\t\ttoken s3cr3t\n\t}",
			want: &Tunnel{Pos: at(2, 2), Backend: "127.0.0.1:22", Tokens: []string{"s3cr3t"}, DialTimeout: DefaultDialTimeout}},
		{name: "one line", directives: "tunnel db.internal:5432 { token a; dial_timeout 3s }",
			want: &Tunnel{Pos: at(2, 2), Backend: "db.internal:5432", Tokens: []string{"a"}, DialTimeout: 3 * time.Second}},
		{name: "tokens repeat and take several values", directives: "tunnel [::1]:22 {\n\t\ttoken a b\n\t\ttoken c a\n\t}",
			want: &Tunnel{Pos: at(2, 2), Backend: "[::1]:22", Tokens: []string{"a", "b", "c"}, DialTimeout: DefaultDialTimeout}},
		{name: "every b64token character", directives: "tunnel a:1 { token AZaz09-._~+/== }",
			want: &Tunnel{Pos: at(2, 2), Backend: "a:1", Tokens: []string{"AZaz09-._~+/=="}, DialTimeout: DefaultDialTimeout}},
		{name: "token from the environment", directives: "tunnel a:1 { token {$HOST} }",
			want: &Tunnel{Pos: at(2, 2), Backend: "a:1", Tokens: []string{"example.com"}, DialTimeout: DefaultDialTimeout}},
		{name: "port only is localhost", directives: "tunnel :5432 { token x }",
			want: &Tunnel{Pos: at(2, 2), Backend: "localhost:5432", Tokens: []string{"x"}, DialTimeout: DefaultDialTimeout}},
		{name: "client certificates only", directives: clientAuthTLS + "\n\ttunnel 10.0.0.7:22",
			want: &Tunnel{Pos: at(3, 2), Backend: "10.0.0.7:22", DialTimeout: DefaultDialTimeout}},
		{name: "client certificates after the tunnel, empty block", directives: "tunnel 10.0.0.7:22 {\n\t}\n\t" + clientAuthTLS,
			want: &Tunnel{Pos: at(2, 2), Backend: "10.0.0.7:22", DialTimeout: DefaultDialTimeout}},
		{name: "both", directives: "tunnel 10.0.0.7:22 { token t }\n\t" + clientAuthTLS,
			want: &Tunnel{Pos: at(2, 2), Backend: "10.0.0.7:22", Tokens: []string{"t"}, DialTimeout: DefaultDialTimeout}},
		{name: "beside routes", directives: "reverse_proxy b\n\thandle /x { respond 1 }\n\ttunnel c:2 { token t }", routes: 2,
			want: &Tunnel{Pos: at(4, 2), Backend: "c:2", Tokens: []string{"t"}, DialTimeout: DefaultDialTimeout}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := inSite(tt.directives)
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			s := cfg.Sites[0]
			if !reflect.DeepEqual(s.Tunnel, tt.want) {
				t.Errorf("Parse(%q) tunnel\n got %+v\nwant %+v", src, s.Tunnel, tt.want)
			}
			if len(s.Routes) != tt.routes {
				t.Errorf("%d routes, want %d", len(s.Routes), tt.routes)
			}
		})
	}
}

func TestParseTunnelErrors(t *testing.T) {
	site := inSite
	const (
		tok      = " { token t }"
		open     = "Roamfile:2:2: tunnel: " + errOpenTunnel
		want     = " (want letters, digits and -._~+/, with = only at the end; RFC 6750 §2.1)"
		noScheme = "a tunnel carries raw TCP: no scheme (want HOST:PORT, as in 127.0.0.1:22)"
	)
	testParseErrors(t, []errorTest{
		// Authentication.
		{"no authentication", site("tunnel a:22"), open},
		{"empty block", site("tunnel a:22 {\n\t}"), open},
		{"only a dial timeout", site("tunnel a:22 { dial_timeout 1s }"), open},
		{"client_auth on another site", site("tunnel a:22") + "\nb.com {\n\trespond 1\n\t" + clientAuthTLS + "\n}", open},
		{"tls without client_auth", site("tunnel a:22\n\ttls internal"), open},
		{"token from an unset variable", site("tunnel a:22 { token {$UNSET} }"), `Roamfile:2:22: {$UNSET} is not set: set UNSET, or give a default: {$UNSET:VALUE} ({$UNSET:} for empty)`},
		{"token from an empty default", site("tunnel a:22 { token {$UNSET:} }"), `Roamfile:2:16: tunnel: token: missing argument`},
		{"token from an empty variable", site(`tunnel a:22 { token "{$EMPTY}" }`), `Roamfile:2:22: tunnel: token: empty token`},
		{"broken client_auth", site("tunnel a:22\n\ttls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_fil ca.pem\n\t\t}\n\t}"),
			`Roamfile:5:4: tls: client_auth: unknown subdirective "trusted_ca_cert_fil" (did you mean trusted_ca_cert_file?)`},
		{"broken tls", site("tunnel a:22\n\ttls cert.pem {\n\t\tclient_auth { trusted_ca_cert_file ca.pem }\n\t}"),
			`Roamfile:3:6: tls: missing key file after "cert.pem" (want tls internal, tls EMAIL or tls CERT_FILE KEY_FILE)`},
		{"misspelt tls", site("tunnel a:22\n\ttsl { client_auth { trusted_ca_cert_file ca.pem } }"),
			`Roamfile:3:2: unknown directive "tsl" (did you mean tls?)`},

		// Placement.
		{"twice", site("tunnel a:22" + tok + "\n\ttunnel b:22" + tok), `Roamfile:3:2: tunnel: already set at Roamfile:2:2`},
		{"in a handle block", site("handle /x {\n\t\ttunnel a:22" + tok + "\n\t}"),
			`Roamfile:3:3: handle: tunnel is not allowed in a handle block (set it at site level)`},
		{"in the global block", inGlobal("tunnel a:22"), `Roamfile:2:2: tunnel is a site directive, not a global option`},
		{"misspelt and alone", site("tunel a:22" + tok), `Roamfile:2:2: unknown directive "tunel" (did you mean tunnel?)`},

		// Backend.
		{"no backend", site("tunnel" + tok), `Roamfile:2:2: tunnel: missing backend address (want tunnel HOST:PORT, as in tunnel 127.0.0.1:22)`},
		{"no backend, no authentication", site("tunnel"),
			"Roamfile:2:2: tunnel: missing backend address (want tunnel HOST:PORT, as in tunnel 127.0.0.1:22)\n" + open},
		{"two backends", site("tunnel a:1 b:2" + tok), `Roamfile:2:13: tunnel: unexpected argument "b:2"`},
		{"no port", site("tunnel db.internal" + tok), `Roamfile:2:9: tunnel: backend "db.internal": missing port (want HOST:PORT, as in 127.0.0.1:22)`},
		{"IPv6 without port", site("tunnel [::1]" + tok), `Roamfile:2:9: tunnel: backend "[::1]": missing port (want HOST:PORT, as in 127.0.0.1:22)`},
		{"empty port", site("tunnel a:" + tok), `Roamfile:2:9: tunnel: backend "a:": missing port after ":"`},
		{"port 0", site("tunnel a:0" + tok), `Roamfile:2:9: tunnel: backend "a:0": invalid port "0" (want 1-65535)`},
		{"port out of range", site("tunnel a:65536" + tok), `Roamfile:2:9: tunnel: backend "a:65536": invalid port "65536" (want 1-65535)`},
		{"named port", site("tunnel a:ssh" + tok), `Roamfile:2:9: tunnel: backend "a:ssh": invalid port "ssh" (want 1-65535)`},
		{"scheme", site("tunnel tcp://a:22" + tok), `Roamfile:2:9: tunnel: backend "tcp://a:22": ` + noScheme},
		{"http scheme", site("tunnel http://a:80" + tok), `Roamfile:2:9: tunnel: backend "http://a:80": ` + noScheme},
		{"path", site("tunnel a:22/x" + tok), `Roamfile:2:9: tunnel: backend "a:22/x": paths are not supported`},
		{"bare IPv6", site("tunnel ::1:22" + tok), `Roamfile:2:9: tunnel: backend "::1:22": IPv6 address needs brackets, as in [::1]:8443`},
		{"brackets around a name", site("tunnel [a]:22" + tok), `Roamfile:2:9: tunnel: backend "[a]:22": brackets around a host that is not an IPv6 address`},
		{"invalid host", site("tunnel a$b:22" + tok), `Roamfile:2:9: tunnel: backend "a$b:22": invalid host "a$b"`},
		{"wildcard host", site("tunnel *.a:22" + tok), `Roamfile:2:9: tunnel: backend "*.a:22": invalid host "*.a"`},
		{"bad backend and no authentication", site("tunnel a"),
			"Roamfile:2:2: tunnel: " + errOpenTunnel + "\n" + `Roamfile:2:9: tunnel: backend "a": missing port (want HOST:PORT, as in 127.0.0.1:22)`},

		// Subdirectives.
		{"unknown subdirective", site("tunnel a:1 {\n\t\tbackend b:2\n\t\ttoken t\n\t}"), `Roamfile:3:3: tunnel: unknown subdirective "backend"`},
		{"misspelt token", site("tunnel a:1 {\n\t\ttokn t\n\t}"), "Roamfile:2:2: tunnel: " + errOpenTunnel + "\n" +
			`Roamfile:3:3: tunnel: unknown subdirective "tokn" (did you mean token?)`},
		{"misspelt dial_timeout", site("tunnel a:1 { dial_timout 1s; token t }"), `Roamfile:2:15: tunnel: unknown subdirective "dial_timout" (did you mean dial_timeout?)`},
		{"token without value", site("tunnel a:1 {\n\t\ttoken\n\t}"), `Roamfile:3:3: tunnel: token: missing argument`},
		{"empty token", site(`tunnel a:1 { token "" }`), `Roamfile:2:21: tunnel: token: empty token`},
		{"token with a space", site(`tunnel a:1 { token ok "a b" }`), `Roamfile:2:24: tunnel: token: invalid token: a space at byte 2` + want},
		{"token with a tab", site("tunnel a:1 { token \"a\tb\" }"), `Roamfile:2:21: tunnel: token: invalid token: a control or non-ASCII byte at byte 2` + want},
		{"non-ASCII token", site("tunnel a:1 { token tökén }"), `Roamfile:2:21: tunnel: token: invalid token: a control or non-ASCII byte at byte 2` + want},
		{"token with a colon", site("tunnel a:1 { token user:pass }"), `Roamfile:2:21: tunnel: token: invalid token: ':' at byte 5` + want},
		{"token with a quote", site(`tunnel a:1 { token 'x' }`), `Roamfile:2:21: tunnel: token: invalid token: '\'' at byte 1` + want},
		{"token with inner =", site("tunnel a:1 { token a=b }"), `Roamfile:2:21: tunnel: token: invalid token: "=" before the end at byte 2` + want},
		{"token of only =", site("tunnel a:1 { token == }"), `Roamfile:2:21: tunnel: token: invalid token: only "="` + want},
		{"token with a block", site("tunnel a:1 {\n\t\ttoken t {\n\t\t}\n\t}"), `Roamfile:3:11: tunnel: token: unexpected block`},
		{"dial_timeout zero", site("tunnel a:1 { token t; dial_timeout 0s }"), `Roamfile:2:37: tunnel: dial_timeout: duration "0s" must be positive`},
		{"dial_timeout negative", site("tunnel a:1 { token t; dial_timeout -1s }"), `Roamfile:2:37: tunnel: dial_timeout: duration "-1s" must be positive`},
		{"dial_timeout invalid", site("tunnel a:1 { token t; dial_timeout 5x }"), `Roamfile:2:37: tunnel: dial_timeout: invalid duration "5x" (examples: 500ms, 5s, 2m, 1h30m)`},
		{"dial_timeout missing", site("tunnel a:1 {\n\t\ttoken t\n\t\tdial_timeout\n\t}"), `Roamfile:4:3: tunnel: dial_timeout: missing argument`},
		{"dial_timeout twice", site("tunnel a:1 {\n\t\ttoken t\n\t\tdial_timeout 1s\n\t\tdial_timeout 2s\n\t}"), `Roamfile:5:3: tunnel: dial_timeout: already set at Roamfile:4:3`},
		{"dial_timeout extra", site("tunnel a:1 { token t; dial_timeout 1s 2s }"), `Roamfile:2:40: tunnel: dial_timeout: unexpected argument "2s"`},
	})
}

// TestParseTunnelErrorHidesToken checks that an invalid token is never
// quoted in an error: errors go to logs.
func TestParseTunnelErrorHidesToken(t *testing.T) {
	const secret = "hunter2:s3cr3t"
	_, err := Parse("Roamfile", []byte(inSite("tunnel a:1 { token "+secret+" }")), testEnv)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Parse error %v, want one that does not quote the token", err)
	}
}

func TestParseClientAuth(t *testing.T) {
	// The site's tls directive is on line 2 at column 2 (inSite).
	tests := []struct {
		name string
		tls  string
		want TLS
	}{
		{name: "auto", tls: "tls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file ca.pem\n\t\t}\n\t}",
			want: TLS{Pos: at(2, 2), ClientCAFiles: []string{"ca.pem"}}},
		{name: "one line", tls: "tls { client_auth { trusted_ca_cert_file ca.pem } }",
			want: TLS{Pos: at(2, 2), ClientCAFiles: []string{"ca.pem"}}},
		{name: "several files, repeated, as written", tls: "tls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file ./a.pem \"/etc/my cas/b.pem\"\n" +
			"\t\t\ttrusted_ca_cert_file c.pem ./a.pem\n\t\t}\n\t}",
			want: TLS{Pos: at(2, 2), ClientCAFiles: []string{"./a.pem", "/etc/my cas/b.pem", "c.pem"}}},
		{name: "internal", tls: "tls internal { client_auth { trusted_ca_cert_file ca.pem } }",
			want: TLS{Pos: at(2, 2), Mode: TLSInternal, ClientCAFiles: []string{"ca.pem"}}},
		{name: "issuer internal", tls: "tls { issuer internal; client_auth { trusted_ca_cert_file ca.pem } }",
			want: TLS{Pos: at(2, 2), Mode: TLSInternal, ClientCAFiles: []string{"ca.pem"}}},
		{name: "files", tls: "tls c.pem k.pem {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file ca.pem\n\t\t}\n\t}",
			want: TLS{Pos: at(2, 2), Mode: TLSFiles, CertFile: "c.pem", KeyFile: "k.pem", ClientCAFiles: []string{"ca.pem"}}},
		{name: "files with an empty block", tls: "tls c.pem k.pem {\n\t}",
			want: TLS{Pos: at(2, 2), Mode: TLSFiles, CertFile: "c.pem", KeyFile: "k.pem"}},
		{name: "acme", tls: "tls ops@example.com {\n\t\tissuer acme\n\t\tclient_auth { trusted_ca_cert_file ca.pem }\n\t\tca https://ca.example.net/dir\n\t}",
			want: TLS{Pos: at(2, 2), Mode: TLSACME, Email: "ops@example.com", CA: "https://ca.example.net/dir", ClientCAFiles: []string{"ca.pem"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := inSite(tt.tls + "\n\treverse_proxy b")
			cfg, err := Parse("Roamfile", []byte(src), testEnv)
			if err != nil {
				t.Fatalf("Parse(%q):\n%v", src, err)
			}
			if got := cfg.Sites[0].TLS; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) TLS\n got %+v\nwant %+v", src, got, tt.want)
			}
		})
	}
}

func TestParseClientAuthErrors(t *testing.T) {
	site := func(tls string) string { return inSite("reverse_proxy b\n\t" + tls) }
	const want = " (want client_auth { trusted_ca_cert_file FILE })"
	testParseErrors(t, []errorTest{
		{"no block", site("tls {\n\t\tclient_auth\n\t}"), `Roamfile:4:3: tls: client_auth: missing block` + want},
		{"argument", site("tls { client_auth ca.pem }"), `Roamfile:3:20: tls: client_auth: unexpected argument "ca.pem"`},
		{"argument and block", site("tls { client_auth ca.pem { trusted_ca_cert_file ca.pem } }"), `Roamfile:3:20: tls: client_auth: unexpected argument "ca.pem"`},
		{"empty block", site("tls {\n\t\tclient_auth {\n\t\t}\n\t}"), `Roamfile:4:3: tls: client_auth: no trusted_ca_cert_file` + want},
		{"unknown subdirective", site("tls {\n\t\tclient_auth {\n\t\t\tmode require\n\t\t}\n\t}"),
			"Roamfile:4:3: tls: client_auth: no trusted_ca_cert_file" + want + "\n" + `Roamfile:5:4: tls: client_auth: unknown subdirective "mode"`},
		{"misspelt subdirective", site("tls { client_auth { trusted_ca ca.pem } }"),
			`Roamfile:3:22: tls: client_auth: unknown subdirective "trusted_ca" (did you mean trusted_ca_cert_file?)`},
		{"misspelt beside a good one", site("tls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file a.pem\n\t\t\ttrusted_ca_cert_flie b.pem\n\t\t}\n\t}"),
			`Roamfile:6:4: tls: client_auth: unknown subdirective "trusted_ca_cert_flie" (did you mean trusted_ca_cert_file?)`},
		{"file missing", site("tls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file\n\t\t}\n\t}"), `Roamfile:5:4: tls: trusted_ca_cert_file: missing argument`},
		{"empty path", site(`tls { client_auth { trusted_ca_cert_file a.pem "" } }`), `Roamfile:3:49: tls: trusted_ca_cert_file: empty path`},
		{"file with a block", site("tls {\n\t\tclient_auth {\n\t\t\ttrusted_ca_cert_file a.pem {\n\t\t\t}\n\t\t}\n\t}"),
			`Roamfile:5:31: tls: trusted_ca_cert_file: unexpected block`},
		{"twice", site("tls {\n\t\tclient_auth { trusted_ca_cert_file a.pem }\n\t\tclient_auth { trusted_ca_cert_file b.pem }\n\t}"),
			`Roamfile:5:3: tls: client_auth: already set at Roamfile:4:3`},
		{"misspelt client_auth", site("tls {\n\t\tclient_ath { trusted_ca_cert_file a.pem }\n\t}"),
			`Roamfile:4:3: tls: unknown subdirective "client_ath" (did you mean client_auth?)`},
		{"Caddy's mode", site("tls {\n\t\tclient_auth {\n\t\t\tmode require_and_verify\n\t\t\ttrusted_ca_cert_file a.pem\n\t\t}\n\t}"),
			`Roamfile:5:4: tls: client_auth: unknown subdirective "mode"`},
		{"ACME setting after certificate files", site("tls c.pem k.pem {\n\t\tclient_auth { trusted_ca_cert_file a.pem }\n\t\tissuer acme\n\t}"),
			`Roamfile:5:3: tls: issuer: does not apply to certificate files (only client_auth does)`},
		{"in the global block", inGlobal("client_auth { trusted_ca_cert_file a.pem }"), `Roamfile:2:2: unknown global option "client_auth"`},
		{"at site level", site("client_auth { trusted_ca_cert_file a.pem }"), `Roamfile:3:2: unknown directive "client_auth"`},
	})
}

// TestParseClientAuthPerHost checks that sites of one host on other ports
// must agree on client_auth: a TLS handshake names the host, not the port.
func TestParseClientAuthPerHost(t *testing.T) {
	const (
		caA  = "\n\ttls { client_auth { trusted_ca_cert_file a.pem } }"
		caAB = "\n\ttls { client_auth { trusted_ca_cert_file a.pem b.pem } }"
		caBA = "\n\ttls internal { client_auth { trusted_ca_cert_file b.pem; trusted_ca_cert_file a.pem } }"
	)
	site := func(addrs, tls string) string { return addrs + " {\n\trespond 1" + tls + "\n}\n" }
	valid := map[string]string{
		"one site, several ports":        site("a.com, a.com:8443", caA),
		"same files in another order":    site("a.com", caAB) + site("a.com:8443", caBA),
		"other hosts":                    site("a.com", caA) + site("b.com:8443", "") + site(":9443", ""),
		"catch-alls agree":               site(":443", caA) + site(":8443", caA),
		"wildcard and name are distinct": site("*.a.com", caA) + site("x.a.com:8443", ""),
	}
	for name, src := range valid {
		if _, err := Parse("Roamfile", []byte(src), testEnv); err != nil {
			t.Errorf("%s: Parse(%q):\n%v", name, src, err)
		}
	}
	const why = "(a TLS handshake names the host, not the port)"
	testParseErrors(t, []errorTest{
		{"client_auth on one port only", site("a.com", caA) + site("b.com, a.com:8443", ""),
			`Roamfile:5:8: site address "a.com:8443": client_auth differs from that of the site at Roamfile:1:1 with the same host "a.com" ` + why},
		{"other files", site("A.com:8443", "") + site("a.com", caA),
			`Roamfile:4:1: site address "a.com": client_auth differs from that of the site at Roamfile:1:1 with the same host "a.com" ` + why},
		{"catch-alls", site(":443", caA) + site(":8443", caAB),
			`Roamfile:5:1: site address ":8443": client_auth differs from that of the site at Roamfile:1:1 with the same catch-all address ` + why},
	})
}

// TestParseTunnelFile checks testdata/tunnel.Roamfile, which uses every
// form of tunnel and client_auth.
func TestParseTunnelFile(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("testdata", "tunnel.Roamfile"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse("Roamfile", src, testEnv)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	want := []struct {
		tunnel    Tunnel
		clientCAs []string
		routes    int
	}{
		{Tunnel{Pos: at(4, 2), Backend: "10.0.0.22:22", Tokens: []string{"dev-token-only", "ops.2024~rotate==", "second/token+b64="}, DialTimeout: 3 * time.Second}, nil, 0},
		{Tunnel{Pos: at(18, 2), Backend: "[fd00::5]:5432", DialTimeout: DefaultDialTimeout},
			[]string{"/etc/roamgate/clients-ca.pem", "/etc/roamgate/old clients-ca.pem"}, 0},
		{Tunnel{Pos: at(28, 2), Backend: "localhost:6379", Tokens: []string{"redis-t0ken"}, DialTimeout: DefaultDialTimeout},
			[]string{"/etc/roamgate/clients-ca.pem"}, 2},
	}
	if len(cfg.Sites) != len(want) {
		t.Fatalf("%d sites, want %d", len(cfg.Sites), len(want))
	}
	for i, w := range want {
		s := cfg.Sites[i]
		if s.Tunnel == nil || !reflect.DeepEqual(*s.Tunnel, w.tunnel) {
			t.Errorf("site %d tunnel\n got %+v\nwant %+v", i, s.Tunnel, w.tunnel)
		}
		if !reflect.DeepEqual(s.TLS.ClientCAFiles, w.clientCAs) || len(s.Routes) != w.routes {
			t.Errorf("site %d: client CAs %q, %d routes; want %q, %d", i, s.TLS.ClientCAFiles, len(s.Routes), w.clientCAs, w.routes)
		}
	}
}
