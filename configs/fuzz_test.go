package configs

import (
	"bytes"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// addSeeds adds the testdata Roamfiles and the sources of the Parse tests'
// cases to the seed corpus of f.
func addSeeds(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.Roamfile"))
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	for _, s := range []string{
		"",
		"a.com\nreverse_proxy b",
		"{ log { level debug; format json } }\na { reverse_proxy b { to c; dial_timeout 1s } }",
		"a, b:1, [::1]:2, https://c:3 {\n\treverse_proxy http://d:4 [::1] :5\n\ttls x y\n}",
		"a {\n\tb {\n\t\tc {\n\t\t\td\n\t\t}\n\t}\n}",
		"http://a {\n}\nb/c {\n}\n{\n}",
		"{ email a@b; acme_ca http://[::1]:1/d; acme_ca_root r; storage file_system /s; on_demand_tls { ask http://x/a } }\n" +
			"a { reverse_proxy b; tls c@d { issuer acme; ca https://e/f; ca_root g; on_demand } }\n" +
			"h { reverse_proxy i; tls internal { on_demand } }",
		"{ storage file_system { root /s }; http_port 443 }\na { reverse_proxy b; tls { email c@d; issuer internal } }",
		"{ zero_rtt off; max_header_bytes 1MiB }\na { respond 404 }",
		"{ data_dir /d; storage redis { address r:6379; db 1; username u; password p; key_prefix k; tls on; tls_ca c; tls_server_name r; dial_timeout 1s } }\na { respond 1 }",
		"{ quic_lb { server_id 0a:3f; nonce_len 9; key 8f95f09245765f80256934e50c66207f; config_id 2; self_encode_length off } }\na { respond 1 }",
		"a {\n\tredir https://{host}{uri} permanent\n\thandle /api/* {\n\t\treverse_proxy b { lb_policy cookie c; header_up Host {upstream_hostport} }\n" +
			"\t\theader +X-A y\n\t}\n\thandle_path /s* { respond \"hi {path}\" 200 }\n\theader -Server\n}",
		"a { reverse_proxy b { health_uri /h; health_interval 1s; health_timeout 1s; health_status 2xx; fail_duration 1s; " +
			"max_fails 2; unhealthy_status 5xx 404; lb_try_duration 1s; lb_try_interval 1ms; keepalive_idle 1m; lb_policy header X; header_down -Y } }",
		"a { handle *.php { respond Gone 410 }; handle */x/* { redir /y 308 }; handle { respond } }",
		"a { handle api { respond 1 2 3 }; header Connection x; handle /a { handle /b { redir {xyz} } } }\nb { header X {host} }",
		"a { tunnel b:22 { token c d==; token e; dial_timeout 1s } }\nf { tunnel [::1]:1; tls { client_auth { trusted_ca_cert_file g h } } }",
		"a, a:1 { tunnel :2; respond 3; tls c k { client_auth { trusted_ca_cert_file d; trusted_ca_cert_file e } } }\n" +
			":4 { tunnel x:5 { token {$HOST} }; tls internal { client_auth { trusted_ca_cert_file \"f g\" } } }",
		"a { tunnel http://b:1/c d { token \"\" x=y; dial_timeout 0 }; handle /e { tunnel f:1 } }\n" +
			"a:2 { tls { client_auth x { trusted_ca_cert_fil y } } }",
	} {
		f.Add([]byte(s))
	}
}

func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse("Roamfile", src, testEnv)
		if err != nil {
			if cfg != nil {
				t.Fatal("Parse returned a Config with an error")
			}
			checkErrorPositions(t, src, err)
			return
		}
		if len(cfg.Sites) == 0 {
			t.Fatal("valid Config without sites")
		}
		if cfg.HTTPPort == cfg.HTTPSPort && cfg.HTTPPort != 0 {
			t.Fatalf("http_port and https_port are both %d in a valid Config", cfg.HTTPPort)
		}
		if cfg.Email != "" && !validEmail(cfg.Email) {
			t.Fatalf("invalid email %q in a valid Config", cfg.Email)
		}
		clientCAs := map[string][]string{} // host → client CAs of its first site
		for _, s := range cfg.Sites {
			if len(s.Addresses) == 0 || len(s.Routes) == 0 && s.Tunnel == nil {
				t.Fatalf("site without addresses, routes or tunnel in a valid Config: %+v", s)
			}
			if !validTLS(s.TLS, cfg) {
				t.Fatalf("invalid tls in a valid Config: %+v", s.TLS)
			}
			if tn := s.Tunnel; tn != nil {
				checkTunnel(t, src, *tn, s.TLS)
			}
			for _, a := range s.Addresses {
				if a.Port < 0 || a.Port > 65535 || canonicalHost(a.Host) != a.Host {
					t.Fatalf("invalid address in a valid Config: %+v", a)
				}
				if first, ok := clientCAs[a.Host]; ok && !sameFiles(first, s.TLS.ClientCAFiles) {
					t.Fatalf("host %q has client CAs %q and %q in a valid Config", a.Host, first, s.TLS.ClientCAFiles)
				}
				clientCAs[a.Host] = s.TLS.ClientCAFiles
			}
			checkHeaderOps(t, s.Headers, false)
			for i, r := range s.Routes {
				checkRoute(t, src, r, i == len(s.Routes)-1)
			}
		}
	})
}

// checkTunnel fails t unless tn, the tunnel of a valid Config's site with
// tls read from src, holds together: someone must authenticate (a token
// or a client certificate), every token is a bearer token, the backend
// is a host and a port, the timeout is positive.
func checkTunnel(t *testing.T, src []byte, tn Tunnel, tls TLS) {
	t.Helper()
	if len(tn.Tokens) == 0 && len(tls.ClientCAFiles) == 0 {
		t.Fatalf("open tunnel in a valid Config: %+v", tn)
	}
	for _, tok := range tn.Tokens {
		if bearerTokenError(tok) != "" {
			t.Fatalf("invalid token %q in a valid Config", tok)
		}
	}
	host, port, err := net.SplitHostPort(tn.Backend)
	if p, ok := parsePort(port); err != nil || host == "" || !ok || p == 0 || strings.Contains(tn.Backend, "/") {
		t.Fatalf("invalid tunnel backend %q in a valid Config", tn.Backend)
	}
	if tn.DialTimeout <= 0 {
		t.Fatalf("tunnel dial timeout %s in a valid Config", tn.DialTimeout)
	}
	if w := wordAt(src, tn.Pos); w != "tunnel" && w != "" {
		t.Fatalf("tunnel at %s, where the source has %q", tn.Pos, w)
	}
}

// checkRoute fails t unless r, a route of a valid Config read from src,
// holds together: one handler, a pattern that handle_path can strip, and
// canonical header names. last says r is its site's last route.
func checkRoute(t *testing.T, src []byte, r Route, last bool) {
	t.Helper()
	n := 0
	for _, set := range []bool{r.ReverseProxy != nil, r.Respond != nil, r.Redir != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("route with %d handlers in a valid Config: %+v", n, r)
	}
	switch directive := wordAt(src, r.Pos); directive {
	case "handle_path":
		if r.StripPrefix == "" || strings.HasSuffix(r.StripPrefix, "/") || !strings.HasPrefix(r.Path, r.StripPrefix) ||
			!strings.HasSuffix(r.Path, "*") || strings.HasPrefix(r.Path, "*") {
			t.Fatalf("handle_path route with pattern %q strips %q", r.Path, r.StripPrefix)
		}
	case "handle":
		if r.StripPrefix != "" {
			t.Fatalf("handle route strips %q", r.StripPrefix)
		}
	case "reverse_proxy", "respond", "redir":
		if r.Path != "" || r.StripPrefix != "" || len(r.Headers) != 0 || !last {
			t.Fatalf("route of a site-level %s: %+v, last: %v", directive, r, last)
		}
	}
	if r.Path != "" && !strings.HasPrefix(r.Path, "/") && !strings.HasPrefix(r.Path, "*") {
		t.Fatalf("invalid pattern %q in a valid Config", r.Path)
	}
	checkHeaderOps(t, r.Headers, false)
	if rp := r.ReverseProxy; rp != nil {
		if len(rp.Upstreams) == 0 || rp.MaxFails < 1 || rp.LBTryInterval <= 0 || rp.HealthInterval <= 0 || rp.HealthTimeout <= 0 {
			t.Fatalf("invalid reverse_proxy in a valid Config: %+v", rp)
		}
		if rp.LBPolicy == LBHeader && (rp.LBKey == "" || textproto.CanonicalMIMEHeaderKey(rp.LBKey) != rp.LBKey) ||
			rp.LBPolicy == LBCookie && !validToken(rp.LBKey) {
			t.Fatalf("invalid lb_policy %d key %q in a valid Config", rp.LBPolicy, rp.LBKey)
		}
		checkHeaderOps(t, rp.HeaderUp, true)
		checkHeaderOps(t, rp.HeaderDown, false)
	}
	if rs := r.Respond; rs != nil && (rs.Status < 100 || rs.Status > 999) {
		t.Fatalf("invalid respond status %d in a valid Config", rs.Status)
	}
	if rd := r.Redir; rd != nil && (rd.To == "" || rd.Code < 300 || rd.Code > 308) {
		t.Fatalf("invalid redir in a valid Config: %+v", rd)
	}
}

// checkHeaderOps fails t unless each of ops has a canonical, valid name
// and a value only when it sets or adds; up says they are header_up's.
func checkHeaderOps(t *testing.T, ops []HeaderOp, up bool) {
	t.Helper()
	for _, op := range ops {
		switch {
		case !validToken(op.Name) || textproto.CanonicalMIMEHeaderKey(op.Name) != op.Name,
			op.Add && op.Delete, op.Delete && op.Value != "",
			slices.Contains(managedHeaders, op.Name),
			op.Name == "Host" && (!up || op.Add || op.Delete),
			placeholderError(op.Value, up) != "":
			t.Fatalf("invalid header op in a valid Config: %+v", op)
		}
	}
}

// wordAt returns the unquoted word of src at p, or "" if there is none
// (the word came from a placeholder or is quoted).
func wordAt(src []byte, p Position) string {
	lines := bytes.Split(bytes.TrimPrefix(src, []byte("\uFEFF")), []byte("\n"))
	if p.Line < 1 || p.Line > len(lines) || p.Col < 1 || p.Col > len(lines[p.Line-1]) {
		return ""
	}
	rest := lines[p.Line-1][p.Col-1:]
	end := bytes.IndexAny(rest, " \t\r\v\f;")
	if end < 0 {
		end = len(rest)
	}
	return string(rest[:end])
}

// validTLS reports whether tls, of a site of cfg, holds together: it has a
// position, its settings suit its mode, on-demand TLS has an ask
// endpoint, and client CA files are named once each.
func validTLS(tls TLS, cfg *Config) bool {
	acme := tls.Email != "" || tls.CA != "" || tls.CARoot != ""
	switch {
	case tls.Pos.Line < 1,
		tls.Email != "" && !validEmail(tls.Email),
		tls.OnDemand && cfg.OnDemandAsk == "",
		slices.Contains(tls.ClientCAFiles, ""),
		len(slices.Compact(slices.Sorted(slices.Values(tls.ClientCAFiles)))) != len(tls.ClientCAFiles):
		return false
	}
	switch tls.Mode {
	case TLSAuto, TLSACME:
		return tls.CertFile == "" && tls.KeyFile == ""
	case TLSInternal:
		return !acme && tls.CertFile == "" && tls.KeyFile == ""
	case TLSFiles:
		return !acme && !tls.OnDemand && tls.CertFile != "" && tls.KeyFile != ""
	}
	return false
}
