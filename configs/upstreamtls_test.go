package configs

import (
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

func TestParseUpstreamTLS(t *testing.T) {
	// The reverse_proxy is at 2:2, its first upstream at 2:16; its block's
	// lines start at column 3.
	tests := []struct {
		name  string
		src   string
		addrs []string // of the upstreams, all https://
		tls   UpstreamTLS
	}{
		{"default port", "reverse_proxy https://b", []string{"b:443"}, UpstreamTLS{}},
		{"port, IPv6, scheme case", "reverse_proxy HTTPS://B.example:8443 https://[::1]:8443", []string{"B.example:8443", "[::1]:8443"}, UpstreamTLS{}},
		{"localhost", "reverse_proxy https://:8443", []string{"localhost:8443"}, UpstreamTLS{}},
		{"to", "reverse_proxy https://a {\n\t\tto https://b\n\t}", []string{"a:443", "b:443"}, UpstreamTLS{}},
		{"every option", "reverse_proxy https://b {\n\t\ttls_ca ca.pem\n\t\ttls_ca other.pem ca.pem more.pem\n\t\ttls_server_name App.Internal\n\t\ttls_client_certificate c.pem k.pem\n\t}",
			[]string{"b:443"}, UpstreamTLS{
				CAFiles:    []File{{Pos: at(3, 10), Path: "ca.pem"}, {Pos: at(4, 10), Path: "other.pem"}, {Pos: at(4, 27), Path: "more.pem"}},
				ServerName: "app.internal",
				ClientCert: File{Pos: at(6, 26), Path: "c.pem"},
				ClientKey:  File{Pos: at(6, 32), Path: "k.pem"},
			}},
		{"insecure", "reverse_proxy https://b {\n\t\ttls_insecure_skip_verify\n\t\ttls_server_name 10.0.0.1\n\t}", []string{"b:443"},
			UpstreamTLS{InsecureSkipVerify: true, ServerName: "10.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("Roamfile", []byte(inSite(tt.src)), testEnv)
			if err != nil {
				t.Fatalf("Parse:\n%v", err)
			}
			rp := cfg.Sites[0].Routes[0].ReverseProxy
			if len(rp.Upstreams) != len(tt.addrs) {
				t.Fatalf("upstreams %+v", rp.Upstreams)
			}
			for i, u := range rp.Upstreams {
				if u.Addr != tt.addrs[i] || !u.TLS {
					t.Errorf("upstream %d: %+v, want %s over TLS", i, u, tt.addrs[i])
				}
			}
			want := tt.tls
			want.Pos = at(2, 16)
			if rp.TLS == nil {
				t.Fatal("no TLS")
			}
			if d := diffRoute(Route{ReverseProxy: &ReverseProxy{TLS: rp.TLS}}, Route{ReverseProxy: &ReverseProxy{TLS: &want}}); d != "" {
				t.Error(d)
			}
		})
	}

	cfg, err := Parse("Roamfile", []byte(inSite("reverse_proxy http://b unix//run/app.sock")), testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if rp := cfg.Sites[0].Routes[0].ReverseProxy; rp.TLS != nil || rp.Upstreams[0].TLS || rp.Upstreams[1].TLS {
		t.Fatalf("plain upstreams got TLS: %+v", rp)
	}
}

func TestParseUpstreamTLSErrors(t *testing.T) {
	rp := func(sub string) string { return inSite("reverse_proxy https://b {\n\t\t" + sub + "\n\t}") }
	plain := func(sub string) string { return inSite("reverse_proxy b {\n\t\t" + sub + "\n\t}") }
	const mixed = ": a reverse_proxy's upstreams are all https:// or none (write two reverse_proxy routes)"
	testParseErrors(t, []errorTest{
		{"https then plain", inSite("reverse_proxy https://a b"), `Roamfile:2:26: reverse_proxy: plain upstream "b" among https:// upstreams (the first is "https://a" at Roamfile:2:16)` + mixed},
		{"plain then https", inSite("reverse_proxy a {\n\t\tto https://b http://c\n\t}"), `Roamfile:3:6: reverse_proxy: https:// upstream "https://b" among plain upstreams (the first is "a" at Roamfile:2:16)` + mixed},
		{"https and unix", inSite("reverse_proxy https://a unix//run/app.sock"), `Roamfile:2:26: reverse_proxy: plain upstream "unix//run/app.sock" among https:// upstreams (the first is "https://a" at Roamfile:2:16)` + mixed},
		{"https without host", inSite("reverse_proxy https://"), `Roamfile:2:16: reverse_proxy: upstream "https://": missing host and port`},
		{"bad https upstream keeps tls_ca quiet", inSite("reverse_proxy https://b:x {\n\t\ttls_ca ca.pem\n\t}"), `Roamfile:2:16: reverse_proxy: upstream "https://b:x": invalid port "x" (want 1-65535)`},

		{"tls_ca without https", plain("tls_ca ca.pem"), `Roamfile:3:3: reverse_proxy: tls_ca: needs https:// upstreams (as in reverse_proxy https://backend:8443)`},
		{"every tls option without https", plain("tls_server_name a; tls_insecure_skip_verify; tls_client_certificate c k"),
			"Roamfile:3:3: reverse_proxy: tls_server_name: needs https:// upstreams (as in reverse_proxy https://backend:8443)\n" +
				"Roamfile:3:22: reverse_proxy: tls_insecure_skip_verify: needs https:// upstreams (as in reverse_proxy https://backend:8443)\n" +
				"Roamfile:3:48: reverse_proxy: tls_client_certificate: needs https:// upstreams (as in reverse_proxy https://backend:8443)"},
		{"misspelt", rp("tls_server a"), `Roamfile:3:3: reverse_proxy: unknown subdirective "tls_server" (did you mean tls_server_name?)`},
		{"tls_ca missing", rp("tls_ca"), `Roamfile:3:3: reverse_proxy: tls_ca: missing argument`},
		{"tls_ca empty", rp(`tls_ca ""`), `Roamfile:3:10: reverse_proxy: tls_ca: empty path`},
		{"tls_ca block", rp("tls_ca a {\n\t\t}"), `Roamfile:3:12: reverse_proxy: tls_ca: unexpected block`},
		{"tls_server_name missing", rp("tls_server_name"), `Roamfile:3:3: reverse_proxy: tls_server_name: missing argument`},
		{"tls_server_name two", rp("tls_server_name a b"), `Roamfile:3:21: reverse_proxy: tls_server_name: unexpected argument "b"`},
		{"tls_server_name invalid", rp("tls_server_name a/b"), `Roamfile:3:19: reverse_proxy: tls_server_name: invalid name "a/b" (want a DNS name or an IP address)`},
		{"tls_server_name twice", rp("tls_server_name a\n\t\ttls_server_name b"), `Roamfile:4:3: reverse_proxy: tls_server_name: already set at Roamfile:3:3`},
		{"tls_insecure_skip_verify argument", rp("tls_insecure_skip_verify yes"), `Roamfile:3:28: reverse_proxy: tls_insecure_skip_verify: unexpected argument "yes"`},
		{"tls_client_certificate none", rp("tls_client_certificate"), `Roamfile:3:3: reverse_proxy: tls_client_certificate: missing certificate and key files (want tls_client_certificate CERT_FILE KEY_FILE)`},
		{"tls_client_certificate one", rp("tls_client_certificate c.pem"), `Roamfile:3:26: reverse_proxy: tls_client_certificate: missing key file after "c.pem" (want tls_client_certificate CERT_FILE KEY_FILE)`},
		{"tls_client_certificate three", rp("tls_client_certificate c k x"), `Roamfile:3:30: reverse_proxy: tls_client_certificate: unexpected argument "x"`},
		{"tls_client_certificate empty", rp(`tls_client_certificate c ""`), `Roamfile:3:28: reverse_proxy: tls_client_certificate: empty path`},
		{"tls_client_certificate twice", rp("tls_client_certificate c k\n\t\ttls_client_certificate d k"), `Roamfile:4:3: reverse_proxy: tls_client_certificate: already set at Roamfile:3:3`},
		{"insecure after tls_ca", rp("tls_ca ca.pem\n\t\ttls_insecure_skip_verify"), `Roamfile:4:3: reverse_proxy: tls_insecure_skip_verify: conflicts with tls_ca at Roamfile:3:3 (nothing would be verified)`},
		{"tls_ca after insecure", rp("tls_insecure_skip_verify\n\t\ttls_ca ca.pem"), `Roamfile:4:3: reverse_proxy: tls_ca: conflicts with tls_insecure_skip_verify at Roamfile:3:3 (nothing would be verified)`},
	})
}

// TestUpstreamTLSLoad: Load reads the files Parse recorded and reports
// each problem at its file's place in the Roamfile.
func TestUpstreamTLSLoad(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // files by relative names, at fixed columns
	tlstest.NewCA(t, ".", "ca")
	clients := tlstest.NewCA(t, ".", "clients")
	tlstest.WriteKeyPair(t, ".", "client", clients.IssueClient(t, "roamgate"))
	tlstest.WriteKeyPair(t, ".", "other", clients.IssueClient(t, "other"))
	write := func(name, content string) {
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("empty.pem", "")
	write("bad.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	if err := os.Mkdir("dir.pem", 0o700); err != nil {
		t.Fatal(err)
	}
	load := func(t *testing.T, block string) (*UpstreamTLS, error) {
		t.Helper()
		src := inSite("reverse_proxy https://127.0.0.1:8443 {\n\t\t" + block + "\n\t}")
		cfg, err := Parse("Roamfile", []byte(src), testEnv)
		if err != nil {
			t.Fatalf("Parse:\n%v", err)
		}
		rt := cfg.Sites[0].Routes[0].ReverseProxy.TLS
		up, err := rt.Load()
		if err != nil {
			if up != nil {
				t.Error("Load returned settings with an error")
			}
			checkErrorPositions(t, []byte(src), err)
			return rt, err
		}
		if len(rt.CAFiles) > 0 && up.RootCAs == nil || len(rt.CAFiles) == 0 && up.RootCAs != nil {
			t.Errorf("root CAs %v for tls_ca %v", up.RootCAs, rt.CAFiles)
		}
		if n := len(up.Certificates); (n == 1) != (rt.ClientCert.Path != "") {
			t.Errorf("%d client certificates", n)
		}
		if up.ServerName != rt.ServerName || up.InsecureSkipVerify != rt.InsecureSkipVerify {
			t.Errorf("settings %+v from %+v", up, rt)
		}
		return rt, nil
	}

	for _, block := range []string{
		"tls_ca ca.pem",
		"tls_ca ca.pem clients.pem\n\t\ttls_server_name app.internal",
		"tls_client_certificate client.pem client-key.pem",
		"tls_insecure_skip_verify",
		"tls_server_name app.internal",
	} {
		if _, err := load(t, block); err != nil {
			t.Errorf("%q: %v", block, err)
		}
	}
	var nilTLS *UpstreamTLS
	if up, err := nilTLS.Load(); up != nil || err != nil {
		t.Errorf("nil Load = %v, %v", up, err)
	}

	for _, tt := range []struct {
		name, block, want string
	}{
		{"missing CA file", "tls_ca ca.pem missing.pem", `Roamfile:3:17: reverse_proxy: tls_ca: "missing.pem": no such file or directory`},
		{"CA files on two lines", "tls_ca empty.pem\n\t\ttls_ca dir.pem",
			"Roamfile:3:10: reverse_proxy: tls_ca: \"empty.pem\": no PEM certificate\n" +
				`Roamfile:4:10: reverse_proxy: tls_ca: "dir.pem": is a directory`},
		{"bad certificate", "tls_ca bad.pem", `Roamfile:3:10: reverse_proxy: tls_ca: "bad.pem": certificate 1: x509: malformed certificate`},
		{"a key for a CA", "tls_ca client-key.pem", `Roamfile:3:10: reverse_proxy: tls_ca: "client-key.pem": no PEM certificate`},
		{"missing key", "tls_client_certificate client.pem nokey.pem", `Roamfile:3:37: reverse_proxy: tls_client_certificate: key "nokey.pem": no such file or directory`},
		{"missing both", "tls_client_certificate nocert.pem nokey.pem",
			"Roamfile:3:26: reverse_proxy: tls_client_certificate: certificate \"nocert.pem\": no such file or directory\n" +
				`Roamfile:3:37: reverse_proxy: tls_client_certificate: key "nokey.pem": no such file or directory`},
		{"key of another certificate", "tls_client_certificate client.pem other-key.pem", `Roamfile:3:26: reverse_proxy: tls_client_certificate: certificate "client.pem" and key "other-key.pem": tls: private key does not match public key`},
		{"swapped", "tls_client_certificate client-key.pem client.pem", `Roamfile:3:26: reverse_proxy: tls_client_certificate: certificate "client-key.pem" and key "client.pem": tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.block)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Load error\n got %v\nwant %s", err, tt.want)
			}
		})
	}
	_, err := load(t, "tls_ca missing.pem")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file is not fs.ErrNotExist: %v", err)
	}
}
