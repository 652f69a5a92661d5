package tlsmgr

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveIssuer(t *testing.T) {
	for name, want := range map[string]Issuer{
		"example.com":         IssuerACME,
		"shop.example.com":    IssuerACME,
		"*.example.com":       IssuerACME,
		"bücher.example":      IssuerACME,
		"localhost":           IssuerLocal,
		"app.localhost":       IssuerLocal,
		"printer.local":       IssuerLocal,
		"db.internal":         IssuerLocal,
		"*.svc.internal":      IssuerLocal,
		"nas.home.arpa":       IssuerLocal,
		"myhost":              IssuerLocal, // single label
		"*.com":               IssuerLocal, // no public CA signs it
		"127.0.0.1":           IssuerLocal,
		"10.1.2.3":            IssuerLocal,
		"8.8.8.8":             IssuerLocal, // IP addresses stay local
		"2001:db8::1":         IssuerLocal,
		"::1":                 IssuerLocal,
		"_acme.example.com":   IssuerACME,
		"xn--bcher-kva.com":   IssuerACME,
		"deep.sub.example.io": IssuerACME,
	} {
		if got := resolveIssuer(IssuerAuto, name); got != want {
			t.Errorf("resolveIssuer(auto, %q) = %s, want %s", name, got, want)
		}
		if got := resolveIssuer(IssuerLocal, name); got != IssuerLocal {
			t.Errorf("resolveIssuer(local, %q) = %s", name, got)
		}
		if got := resolveIssuer(IssuerACME, name); got != IssuerACME {
			t.Errorf("resolveIssuer(acme, %q) = %s", name, got)
		}
	}
}

// TestValidateRejects checks Validate and New against the same invalid
// configurations, and that neither touches the data directory.
func TestValidateRejects(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // must not come into being
	files := t.TempDir()
	garbage := filepath.Join(files, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyOnly := filepath.Join(files, "key-only.pem")
	if err := os.WriteFile(keyOnly, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(files, "missing.pem")
	const ask = "http://127.0.0.1:9/check"

	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{
			"public wildcard without on-demand",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"*.example.com"}}}},
			[]string{`tls site 1: name "*.example.com": wildcard certificates need the DNS challenge, which roamgate does not support; use tls { on_demand } or tls CERT KEY`},
		},
		{
			"forced ACME wildcard without on-demand",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"*.svc.internal"}, Issuer: IssuerACME}}},
			[]string{`name "*.svc.internal": wildcard certificates need the DNS challenge`},
		},
		{
			"on-demand without ask",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"*.example.com"}, OnDemand: true}}},
			[]string{"tls site 1: on_demand needs an ask endpoint"},
		},
		{
			"missing CA root file",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}}}, ACME: ACME{CARootFile: missing}},
			[]string{`tls acme ca root "` + missing + `": no such file or directory`},
		},
		{
			"garbage CA root file",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}, ACME: ACME{CARootFile: garbage}}}},
			[]string{`tls acme ca root "` + garbage + `": no PEM certificate`},
		},
		{
			"CA root file with a key only",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}}}, ACME: ACME{CARootFile: keyOnly}},
			[]string{`tls acme ca root "` + keyOnly + `": no PEM certificate`},
		},
		{
			"plain http CA",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}}}, ACME: ACME{CA: "http://ca.example.net/dir"}},
			[]string{`tls acme ca "http://ca.example.net/dir": http:// is allowed only for internal hosts`},
		},
		{
			"relative CA URL",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}}}, ACME: ACME{CA: "ca.example.net/dir"}},
			[]string{`tls acme ca "ca.example.net/dir": want an absolute https:// directory URL`},
		},
		{
			"no challenge left",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}, ACME: ACME{DisableHTTPChallenge: true}}}, ACME: ACME{DisableTLSALPNChallenge: true}},
			[]string{"both the HTTP-01 and the TLS-ALPN-01 challenge are disabled"},
		},
		{
			"bad email",
			Config{DataDir: dir, Sites: []Site{{Names: []string{"example.com"}}}, ACME: ACME{Email: "ops at example.com"}},
			[]string{`tls acme email "ops at example.com": not an email address`},
		},
		{
			"bad ask URL",
			Config{DataDir: dir, OnDemandAsk: "localhost:9123/check"},
			[]string{`tls on-demand ask URL "localhost:9123/check"`},
		},
		{
			"catch-all without on-demand",
			Config{DataDir: dir, Sites: []Site{{CatchAll: true}}},
			[]string{"tls site 1: a catch-all site needs OnDemand (certificates for any name) or ClientCAFiles (client certificates for any name)"},
		},
		{
			"two catch-alls",
			Config{DataDir: dir, OnDemandAsk: ask, Sites: []Site{{CatchAll: true, OnDemand: true}, {CatchAll: true, OnDemand: true, Issuer: IssuerLocal}}},
			[]string{"tls site 2: a second catch-all site (tls site 1 is one)"},
		},
		{
			"on-demand certificate files",
			Config{DataDir: dir, OnDemandAsk: ask, Sites: []Site{{Names: []string{"a.example.com"}, CertFile: "c.pem", KeyFile: "k.pem", OnDemand: true}}},
			[]string{"tls site 1: certificate files leave nothing to obtain on demand"},
		},
		{
			"ratio",
			Config{DataDir: dir, RenewalWindowRatio: 1},
			[]string{"tls renewal window ratio 1 is out of range"},
		},
		{
			"ports",
			Config{DataDir: dir, HTTPPort: -1, TLSPort: 70000},
			[]string{"tls http challenge port -1 is out of range", "tls tls challenge port 70000 is out of range"},
		},
		{
			"same challenge ports",
			Config{DataDir: dir, HTTPPort: 443},
			[]string{"tls http and tls challenge ports must differ (both are 443)"},
		},
		{
			"every problem at once, each file once",
			Config{
				DataDir: dir,
				ACME:    ACME{CARootFile: missing},
				Sites: []Site{
					{Names: []string{"*.example.com"}},
					{Names: []string{"a.example.org"}, OnDemand: true},
					{Names: []string{"b.example.org"}},
				},
			},
			[]string{"wildcard certificates need the DNS challenge", "on_demand needs an ask endpoint", "tls acme ca root"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verr := Validate(tt.cfg)
			m, nerr := New(tt.cfg, testLogger(t))
			if nerr == nil {
				m.Stop()
			}
			for _, err := range []error{verr, nerr} {
				if !errorsContain(err, tt.want...) {
					t.Errorf("error %v does not contain %q", err, tt.want)
				}
			}
			if verr != nil && nerr != nil && verr.Error() != nerr.Error() {
				t.Errorf("Validate and New disagree:\n%v\n%v", verr, nerr)
			}
			if verr != nil && strings.Count(verr.Error(), missing) > 1 {
				t.Errorf("a missing file is reported more than once: %v", verr)
			}
		})
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the data directory was created by Validate or a failed New: %v", err)
	}
}

// TestValidateAccepts checks configurations that must pass, without side
// effects.
func TestValidateAccepts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for name, cfg := range map[string]Config{
		"public names":        {DataDir: dir, Sites: []Site{{Names: []string{"example.com", "www.example.com"}}}},
		"local wildcard":      {DataDir: dir, Sites: []Site{{Names: []string{"*.svc.internal", "*.example.com"}, Issuer: IssuerLocal}}},
		"on-demand wildcard":  {DataDir: dir, OnDemandAsk: "https://auth.example.com/ask", Sites: []Site{{Names: []string{"*.example.com"}, OnDemand: true}}},
		"on-demand catch-all": {DataDir: dir, OnDemandAsk: "http://localhost:9123/check", Sites: []Site{{CatchAll: true, OnDemand: true}}},
		"loopback http CA":    {DataDir: dir, Sites: []Site{{Names: []string{"app.example.com"}}}, ACME: ACME{CA: "http://127.0.0.1:14000/dir"}},
		"ratio and intervals": {DataDir: dir, RenewalWindowRatio: 0.5, RenewCheckInterval: 1, OCSPCheckInterval: 1, HTTPPort: 8080, TLSPort: 8443},
		"one challenge off":   {DataDir: dir, Sites: []Site{{Names: []string{"example.com"}, ACME: ACME{DisableHTTPChallenge: true}}}},
	} {
		if err := Validate(cfg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Validate created the data directory: %v", err)
	}
}

// TestACMESetups checks that distinct ACME settings get distinct
// certmagic configs, equal ones share one, and on-demand names get their
// own.
func TestACMESetups(t *testing.T) {
	m := newTestManager(t, Config{
		DataDir:     t.TempDir(),
		ACME:        ACME{CA: "https://ca.example.net/dir", Email: "ops@example.com"},
		OnDemandAsk: "http://127.0.0.1:9/ask",
		Sites: []Site{
			{Names: []string{"a.example.com", "localhost"}},
			{Names: []string{"b.example.com"}},
			{Names: []string{"c.example.com"}, ACME: ACME{Email: "shop@example.com"}},
			{Names: []string{"d.example.com"}, ACME: ACME{DisableHTTPChallenge: true}},
			{Names: []string{"*.tenants.example.com"}, OnDemand: true},
		},
	})
	a, b, c, d := m.issuanceFor("a.example.com"), m.issuanceFor("b.example.com"), m.issuanceFor("c.example.com"), m.issuanceFor("d.example.com")
	od := m.issuanceFor("x.tenants.example.com")
	if a != b {
		t.Error("equal ACME settings got different configs")
	}
	if a == c || a == d || c == d || od == a {
		t.Error("different ACME settings share a config")
	}
	if m.issuanceFor("localhost") != m.plan().issuances[0] {
		t.Error("localhost is not the local CA's")
	}
	if got := c.acme.Email; got != "shop@example.com" {
		t.Errorf("site email %q, want shop@example.com", got)
	}
	if got := c.acme.CA; got != "https://ca.example.net/dir" {
		t.Errorf("site CA %q, want the default's", got)
	}
	if !d.acme.DisableHTTPChallenge || d.acme.DisableTLSALPNChallenge {
		t.Error("site challenge switches not applied")
	}
	if od.magic.OnDemand == nil || a.magic.OnDemand != nil {
		t.Error("on-demand config mix-up")
	}
	if !a.acme.Agreed || a.acme.AltHTTPPort != 0 {
		t.Errorf("issuer Agreed=%v AltHTTPPort=%d", a.acme.Agreed, a.acme.AltHTTPPort)
	}
	for _, u := range m.plan().issuances {
		if u.magic.OCSP.DisableStapling {
			t.Errorf("OCSP stapling is off for %+v", u.key)
		}
	}
	if n := len(m.plan().issuances); n != 5 {
		t.Errorf("%d issuances, want 5 (local, a+b, c, d, on-demand)", n)
	}
}
