package configs

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// onDemandGlobal is a global block that allows on-demand TLS.
const onDemandGlobal = "{\n\ton_demand_tls {\n\t\task http://127.0.0.1:9123/check\n\t}\n}\n"

func TestParseTLS(t *testing.T) {
	// The site starts at line 1 (line 6 after onDemandGlobal) and its tls
	// directive is on the line after that, at column 2.
	tests := []struct {
		name     string
		onDemand bool // prepend onDemandGlobal
		tls      string
		want     TLS
	}{
		{name: "internal", tls: "tls internal",
			want: TLS{Pos: at(2, 2), Mode: TLSInternal}},
		{name: "files", tls: "tls c.pem k.pem",
			want: TLS{Pos: at(2, 2), Mode: TLSFiles, CertFile: "c.pem", KeyFile: "k.pem"}},
		{name: "email", tls: "tls ops@example.com",
			want: TLS{Pos: at(2, 2), Mode: TLSAuto, Email: "ops@example.com"}},
		{name: "quoted email", tls: `tls "o+ps@example.com"`,
			want: TLS{Pos: at(2, 2), Email: "o+ps@example.com"}},
		{name: "empty block", tls: "tls {\n\t}",
			want: TLS{Pos: at(2, 2)}},
		{name: "internal with empty block", tls: "tls internal {\n\t}",
			want: TLS{Pos: at(2, 2), Mode: TLSInternal}},
		{name: "issuer acme", tls: "tls {\n\t\tissuer acme\n\t}",
			want: TLS{Pos: at(2, 2), Mode: TLSACME}},
		{name: "issuer internal", tls: "tls { issuer internal }",
			want: TLS{Pos: at(2, 2), Mode: TLSInternal}},
		{name: "email subdirective", tls: "tls {\n\t\temail ops@example.com\n\t}",
			want: TLS{Pos: at(2, 2), Email: "ops@example.com"}},
		{name: "ca and ca_root without issuer", tls: "tls {\n\t\tca https://ca.example.net/acme/directory\n\t\tca_root ca.pem\n\t}",
			want: TLS{Pos: at(2, 2), CA: "https://ca.example.net/acme/directory", CARoot: "ca.pem"}},
		{name: "ca on loopback over http", tls: "tls { ca http://[::1]:14000/dir }",
			want: TLS{Pos: at(2, 2), CA: "http://[::1]:14000/dir"}},
		{name: "everything", onDemand: true,
			tls: "tls ops@example.com {\n\t\tissuer acme\n\t\tca https://localhost:14000/dir\n\t\tca_root \"./pebble ca.pem\"\n\t\ton_demand\n\t}",
			want: TLS{Pos: at(7, 2), Mode: TLSACME, Email: "ops@example.com",
				CA: "https://localhost:14000/dir", CARoot: "./pebble ca.pem", OnDemand: true}},
		{name: "internal on demand", onDemand: true, tls: "tls internal {\n\t\ton_demand\n\t}",
			want: TLS{Pos: at(7, 2), Mode: TLSInternal, OnDemand: true}},
		{name: "issuer internal on demand", onDemand: true, tls: "tls { issuer internal; on_demand }",
			want: TLS{Pos: at(7, 2), Mode: TLSInternal, OnDemand: true}},
		{name: "auto on demand", onDemand: true, tls: "tls { on_demand }",
			want: TLS{Pos: at(7, 2), OnDemand: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "a.com {\n\t" + tt.tls + "\n\treverse_proxy b\n}"
			if tt.onDemand {
				src = onDemandGlobal + src
			}
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

// TestParseTLSPosWithoutDirective checks that a site without a tls
// directive has its own position as TLS.Pos, so that errors about its
// certificate (in tlsmgr, say) point somewhere.
func TestParseTLSPosWithoutDirective(t *testing.T) {
	cfg, err := Parse("Roamfile", []byte("a {\n\treverse_proxy b\n}\n\nc, d {\n\treverse_proxy b\n}"), testEnv)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []Position{at(1, 1), at(5, 1)} {
		if got := cfg.Sites[i].TLS; !reflect.DeepEqual(got, TLS{Pos: want}) {
			t.Errorf("site %d TLS = %+v, want only Pos %s", i, got, want)
		}
	}
}

// TestParseACMEFile checks testdata/acme.Roamfile, which uses every global
// option and tls form at once.
func TestParseACMEFile(t *testing.T) {
	path := filepath.Join("testdata", "acme.Roamfile")
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse("Roamfile", src, testEnv)
	if err != nil {
		t.Fatalf("Parse:\n%v", err)
	}
	g := *cfg
	g.Sites = nil
	wantGlobal := Config{
		File:                "Roamfile",
		ZeroRTT:             true,
		MaxHeaderBytes:      DefaultMaxHeaderBytes,
		MaxHeaderFieldBytes: DefaultMaxHeaderFieldBytes,
		HandshakeRate:       DefaultHandshakeRate,
		HandshakeRatePerIP:  DefaultHandshakeRatePerIP,
		UpgradeGrace:        DefaultUpgradeGrace,
		UpgradeTimeout:      DefaultUpgradeTimeout,
		UpgradeSteering:     "auto",
		HTTPSPort:           443,
		HTTPPort:            8080,
		DataDir:             "/var/lib/roamgate",
		Email:               "ops@example.com",
		ACMECA:              "https://acme-v02.api.letsencrypt.org/directory",
		ACMECARoot:          "/etc/roamgate/acme-roots.pem",
		OnDemandAsk:         "http://localhost:9123/check",
		Log:                 Log{Level: "info", Format: "console"},
	}
	if !reflect.DeepEqual(g, wantGlobal) {
		t.Errorf("global settings\n got %+v\nwant %+v", g, wantGlobal)
	}
	wantTLS := []TLS{
		{Pos: at(13, 1)},
		{Pos: at(18, 2), Email: "web@example.com"},
		{Pos: at(23, 2), Mode: TLSACME, Email: "shop@example.com", CA: "https://ca.example.net/acme/directory",
			CARoot: "/etc/roamgate/private-ca.pem"},
		{Pos: at(33, 2), Mode: TLSACME, Email: "tenants@example.com", OnDemand: true},
		{Pos: at(41, 2), Mode: TLSInternal, OnDemand: true},
		{Pos: at(48, 2), Mode: TLSInternal},
		{Pos: at(53, 2), Mode: TLSACME, CA: "http://127.0.0.1:14000/dir", CARoot: "pebble.minica.pem"},
		{Pos: at(62, 2), Mode: TLSFiles, CertFile: "tools.pem", KeyFile: "tools-key.pem"},
	}
	if len(cfg.Sites) != len(wantTLS) {
		t.Fatalf("%d sites, want %d", len(cfg.Sites), len(wantTLS))
	}
	for i, want := range wantTLS {
		if got := cfg.Sites[i].TLS; !reflect.DeepEqual(got, want) {
			t.Errorf("site %d (%s) TLS\n got %+v\nwant %+v", i, cfg.Sites[i].Addresses[0].Text, got, want)
		}
	}
}

func TestParseURLs(t *testing.T) {
	const (
		acmeWant = ` (want an https:// URL, as in https://acme-v02.api.letsencrypt.org/directory)`
		askWant  = ` (want an http:// or https:// URL, as in http://localhost:9123/check)`
		onlyLoop = `: http:// is allowed only for localhost, 127.0.0.1 and ::1 (want https://)`
	)
	tests := []struct {
		url      string
		acmeErr  string // error message of "acme_ca URL" after its position; "" if valid
		askError string // likewise for "ask URL"
	}{
		{"https://acme.example.com/directory", "", ""},
		{"HTTPS://acme.example.com:8443/dir?x=1", "", ""},
		{"https://[2001:db8::1]/dir", "", ""},
		{"http://localhost:14000/dir", "", ""},
		{"http://LocalHost/dir", "", ""},
		{"http://127.0.0.1:14000/dir", "", ""},
		{"http://[::1]:14000/dir", "", ""},
		{"http://[0:0::1]/dir", "", ""},
		{"http://acme.example.com/dir", `acme_ca: URL "http://acme.example.com/dir"` + onlyLoop, ""},
		{"http://127.0.0.2/dir", `acme_ca: URL "http://127.0.0.2/dir"` + onlyLoop, ""},
		{"http://localhost.example.com/", `acme_ca: URL "http://localhost.example.com/"` + onlyLoop, ""},
		{"ftp://acme.example.com/dir", `acme_ca: invalid URL "ftp://acme.example.com/dir"` + acmeWant,
			`on_demand_tls: ask: invalid URL "ftp://acme.example.com/dir"` + askWant},
		{"acme.example.com/dir", `acme_ca: invalid URL "acme.example.com/dir"` + acmeWant,
			`on_demand_tls: ask: invalid URL "acme.example.com/dir"` + askWant},
		{"localhost:9123", `acme_ca: invalid URL "localhost:9123"` + acmeWant,
			`on_demand_tls: ask: invalid URL "localhost:9123"` + askWant},
		{"/directory", `acme_ca: invalid URL "/directory"` + acmeWant,
			`on_demand_tls: ask: invalid URL "/directory"` + askWant},
		{"https:///directory", `acme_ca: invalid URL "https:///directory"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https:///directory"` + askWant},
		{"https:acme.example.com", `acme_ca: invalid URL "https:acme.example.com"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https:acme.example.com"` + askWant},
		{"https://acme.example.com:99999/", `acme_ca: invalid URL "https://acme.example.com:99999/"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https://acme.example.com:99999/"` + askWant},
		{"https://a$b/", `acme_ca: invalid URL "https://a$b/"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https://a$b/"` + askWant},
		{"https://a/b c", `acme_ca: invalid URL "https://a/b c"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https://a/b c"` + askWant},
		{"https://[::1/", `acme_ca: invalid URL "https://[::1/"` + acmeWant,
			`on_demand_tls: ask: invalid URL "https://[::1/"` + askWant},
		{"", `acme_ca: invalid URL ""` + acmeWant, `on_demand_tls: ask: invalid URL ""` + askWant},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			q := strings.ReplaceAll(tt.url, `"`, `\"`)
			for _, c := range []struct {
				src, want, pos string
				get            func(*Config) string
			}{
				{"{\n\tacme_ca \"" + q + "\"\n}\na { reverse_proxy b }", tt.acmeErr, "Roamfile:2:10: ",
					func(c *Config) string { return c.ACMECA }},
				{"{\n\ton_demand_tls {\n\t\task \"" + q + "\"\n\t}\n}\na { reverse_proxy b }", tt.askError, "Roamfile:3:7: ",
					func(c *Config) string { return c.OnDemandAsk }},
			} {
				cfg, err := Parse("Roamfile", []byte(c.src), testEnv)
				switch {
				case c.want == "" && err != nil:
					t.Errorf("Parse(%q): %v", c.src, err)
				case c.want == "" && c.get(cfg) != tt.url:
					t.Errorf("Parse(%q) stored %q, want it as written", c.src, c.get(cfg))
				case c.want != "" && (err == nil || err.Error() != c.pos+c.want):
					t.Errorf("Parse(%q) error\n got %v\nwant %s", c.src, err, c.pos+c.want)
				}
			}
		})
	}
}

func TestParseURLWrapsCause(t *testing.T) {
	_, err := Parse("Roamfile", []byte("{\n\tacme_ca https://[::1/\n}\na { reverse_proxy b }"), testEnv)
	var urlErr *url.Error
	if !errors.As(err, &urlErr) {
		t.Errorf("Parse error %v does not wrap the *url.Error", err)
	}
}

func TestValidEmail(t *testing.T) {
	tests := []struct {
		s    string
		want bool
	}{
		{"ops@example.com", true},
		{"o.p+s@localhost", true},
		{"ünï@cödé.example", true},
		{"", false},
		{"ops", false},
		{"@example.com", false},
		{"ops@", false},
		{"@", false},
		{"a@b@c", false},
		{"o ps@example.com", false},
		{"ops@exa\tmple.com", false},
		{"ops@example.com\n", false},
		{"ops@exa\x00mple.com", false},
		{"ops@example.com\u00a0", false},
	}
	for _, tt := range tests {
		if got := validEmail(tt.s); got != tt.want {
			t.Errorf("validEmail(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}

func TestParseReportsAllTLSErrors(t *testing.T) {
	src := `{
	https_port 80
	email ops
	data_dir /a
	storage file_system /b
}
a.com {
	reverse_proxy b
	tls internal {
		on_demand
		ca https://ca.example.net/dir
		isuer acme
	}
}
b.com {
	reverse_proxy b
	tls ops@example.com {
		email dev@example.com
		issuer acm
		ca http://ca.example.net/dir
	}
}
`
	want := []string{
		`Roamfile:2:13: https_port: http_port and https_port must differ (both are 80)`,
		`Roamfile:3:8: email: invalid email address "ops" (want NAME@DOMAIN, as in ops@example.com)`,
		`Roamfile:5:2: storage: data directory already set by data_dir at Roamfile:4:2`,
		`Roamfile:10:3: tls: on_demand needs the global on_demand_tls { ask URL } (roamgate never issues certificates without asking)`,
		`Roamfile:11:3: tls: ca: only applies to ACME, not to the internal issuer`,
		`Roamfile:12:3: tls: unknown subdirective "isuer" (did you mean issuer?)`,
		`Roamfile:18:3: tls: email: already set at Roamfile:17:6`,
		`Roamfile:19:10: tls: issuer: unknown issuer "acm" (did you mean acme?)`,
		`Roamfile:20:6: tls: ca: URL "http://ca.example.net/dir": http:// is allowed only for localhost, 127.0.0.1 and ::1 (want https://)`,
	}
	_, err := Parse("Roamfile", []byte(src), testEnv)
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
}

func TestTLSModeString(t *testing.T) {
	for mode, want := range map[TLSMode]string{
		TLSAuto: "auto", TLSInternal: "internal", TLSFiles: "files", TLSACME: "acme", 9: "TLSMode(9)",
	} {
		if got := mode.String(); got != want {
			t.Errorf("TLSMode(%d).String() = %q, want %q", int(mode), got, want)
		}
	}
}
