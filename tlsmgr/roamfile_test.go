package tlsmgr

import (
	"crypto/tls"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/configs"
)

func TestConfigFor(t *testing.T) {
	cfg, err := configs.Parse("Roamfile", []byte(`{
	data_dir /from/roamfile
}
app.internal, *.svc.internal {
	reverse_proxy 127.0.0.1:1
}
:8443 {
	reverse_proxy 127.0.0.1:2
	tls internal
}
:9443, localhost:9444 {
	reverse_proxy 127.0.0.1:3
}
files.test {
	reverse_proxy 127.0.0.1:4
	tls site.pem site-key.pem
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ConfigFor(cfg, "")
	want := Config{
		DataDir:           "/from/roamfile",
		DefaultServerName: "localhost",
		HTTPPort:          80,
		TLSPort:           443,
		Sites: []Site{
			{Source: "Roamfile:4:1: tls", Names: []string{"app.internal", "*.svc.internal"}},
			{Source: "Roamfile:9:2: tls", Names: []string{"localhost", "127.0.0.1", "::1"}, Issuer: IssuerLocal},
			// The catch-all names are managed once, by the first site.
			{Source: "Roamfile:16:2: tls", Names: []string{"files.test"}, CertFile: "site.pem", KeyFile: "site-key.pem"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ConfigFor:\n got %+v\nwant %+v", got, want)
	}
	if dd := ConfigFor(cfg, "/from/flag").DataDir; dd != "/from/flag" {
		t.Fatalf("--data-dir should win over data_dir: %q", dd)
	}
	cfg.DataDir = ""
	if dd := ConfigFor(cfg, "").DataDir; dd != DefaultDataDir() {
		t.Fatalf("default data dir %q, want %q", dd, DefaultDataDir())
	}
	m, err := New(ConfigFor(cfg, t.TempDir()), nil)
	if err != nil {
		t.Fatalf("the derived config does not validate: %v", err)
	}
	m.Stop()
}

// TestConfigForACME maps the Roamfile's ACME settings. It builds the
// configs.Config by hand, as the parser would.
func TestConfigForACME(t *testing.T) {
	cfg := &configs.Config{
		HTTPSPort:   8443,
		HTTPPort:    8080,
		Email:       "ops@example.com",
		ACMECA:      "https://ca.example.net/dir",
		ACMECARoot:  "/etc/roamgate/roots.pem",
		OnDemandAsk: "http://localhost:9123/check",
		DefaultBind: []string{"192.0.2.1", "2001:db8::1"},
		Sites: []configs.Site{
			{Addresses: []configs.Address{{Host: "example.com"}}},
			{
				Addresses: []configs.Address{{Host: "www.example.com"}},
				TLS:       configs.TLS{Email: "web@example.com"},
			},
			{
				Addresses: []configs.Address{{Host: "shop.example.com"}},
				TLS: configs.TLS{Mode: configs.TLSACME, Email: "shop@example.com",
					CA: "https://private.example.net/acme/directory", CARoot: "/etc/roamgate/private.pem"},
			},
			{
				Addresses: []configs.Address{{Host: "*.tenants.example.com"}},
				TLS:       configs.TLS{Mode: configs.TLSACME, OnDemand: true},
			},
			{
				Addresses: []configs.Address{{Host: "internal.example.com"}},
				TLS:       configs.TLS{Mode: configs.TLSInternal},
			},
			{
				// A catch-all with on_demand: any name the ask endpoint
				// allows; its local names stay managed at start.
				Addresses: []configs.Address{{Host: ""}},
				TLS:       configs.TLS{Mode: configs.TLSACME, OnDemand: true},
			},
		},
	}
	got := ConfigFor(cfg, "/data")
	want := Config{
		DataDir:           "/data",
		DefaultServerName: "localhost",
		ACME:              ACME{CA: "https://ca.example.net/dir", Email: "ops@example.com", CARootFile: "/etc/roamgate/roots.pem"},
		OnDemandAsk:       "http://localhost:9123/check",
		HTTPPort:          8080,
		TLSPort:           8443,
		ListenHost:        "192.0.2.1",
		Sites: []Site{
			{Names: []string{"example.com"}},
			{Names: []string{"www.example.com"}, ACME: ACME{Email: "web@example.com"}},
			{Names: []string{"shop.example.com"}, Issuer: IssuerACME, ACME: ACME{
				CA: "https://private.example.net/acme/directory", Email: "shop@example.com", CARootFile: "/etc/roamgate/private.pem"}},
			{Names: []string{"*.tenants.example.com"}, Issuer: IssuerACME, OnDemand: true},
			{Names: []string{"internal.example.com"}, Issuer: IssuerLocal},
			{Issuer: IssuerACME, OnDemand: true, CatchAll: true},
			{Names: []string{"localhost", "127.0.0.1", "::1"}}, // IssuerAuto keeps them local
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ConfigFor:\n got %+v\nwant %+v", got, want)
	}

	// The mapped config passes validation but for the CA root files,
	// which do not exist here: the errors name them.
	err := Validate(got)
	if !errorsContain(err, `"/etc/roamgate/roots.pem"`, `"/etc/roamgate/private.pem"`) {
		t.Fatalf("Validate: %v", err)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(line, "tls acme ca root ") {
			t.Errorf("unexpected problem: %s", line)
		}
	}
}

// TestConfigForWildcardNeedsOnDemand checks the error a Roamfile gets for
// a public wildcard site without on_demand.
func TestConfigForWildcardNeedsOnDemand(t *testing.T) {
	cfg := &configs.Config{Sites: []configs.Site{{Addresses: []configs.Address{{Host: "*.example.com"}}}}}
	err := Validate(ConfigFor(cfg, t.TempDir()))
	if !errorsContain(err, "wildcard certificates need the DNS challenge", "tls { on_demand }") {
		t.Fatalf("Validate: %v", err)
	}
}

// TestConfigForClientAuth maps client_auth: to the names of its block, and
// for a catch-all block to the local names and every other name (CatchAll).
func TestConfigForClientAuth(t *testing.T) {
	dir := t.TempDir()
	ca, ca2 := newClientPKI(t, dir, "ca").caFile, newClientPKI(t, dir, "ca2").caFile
	cfg, err := configs.Parse("Roamfile", []byte(`mtls.internal {
	tunnel 127.0.0.1:22
	tls internal { client_auth { trusted_ca_cert_file `+ca+` } }
}
open.internal {
	respond 1
}
:8443 {
	respond 2
	tls { client_auth { trusted_ca_cert_file `+ca+` } }
}
:9443 {
	respond 3
	tls { client_auth { trusted_ca_cert_file `+ca+` } }
}
files.test {
	respond 4
	tls c.pem k.pem { client_auth { trusted_ca_cert_file `+ca2+` } }
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ConfigFor(cfg, t.TempDir())
	want := []Site{
		{Source: "Roamfile:3:2: tls", Names: []string{"mtls.internal"}, Issuer: IssuerLocal, ClientCAFiles: []string{ca}},
		{Source: "Roamfile:5:1: tls", Names: []string{"open.internal"}},
		// The catch-all's: any other name, then its local names.
		{Source: "Roamfile:10:2: tls", CatchAll: true, ClientCAFiles: []string{ca}},
		{Source: "Roamfile:10:2: tls", Names: []string{"localhost", "127.0.0.1", "::1"}, ClientCAFiles: []string{ca}},
		// The second catch-all block (another port) adds nothing.
		{Source: "Roamfile:18:2: tls", Names: []string{"files.test"}, CertFile: "c.pem", KeyFile: "k.pem", ClientCAFiles: []string{ca2}},
	}
	if !reflect.DeepEqual(got.Sites, want) || got.DefaultServerName != "localhost" {
		t.Fatalf("ConfigFor sites:\n got %+v\nwant %+v (default name %q)", got.Sites, want, got.DefaultServerName)
	}
	m := newTestManager(t, got) // validates, reading the CA files
	c := m.TLSConfig()
	for name, want := range map[string][]string{
		"mtls.internal": {ca}, "anything.example": {ca}, "localhost": {ca}, "": {ca},
		"files.test": {ca2}, "open.internal": nil,
	} {
		cfg, err := c.GetConfigForClient(&tls.ClientHelloInfo{ServerName: name})
		switch {
		case err != nil:
			t.Errorf("SNI %q: %v", name, err)
		case want == nil && cfg != nil:
			t.Errorf("SNI %q: asks for a client certificate", name)
		case want != nil && (cfg == nil || cfg.ClientCAs != m.plan().clientCAs[clientCAsKey(want)].pool):
			t.Errorf("SNI %q: got %+v, want the pool of %q", name, cfg, want)
		}
	}

	// A catch-all block that serves files: its local names are
	// informative, its client CAs still apply to any name.
	cfg, err = configs.Parse("Roamfile", []byte(":443 {\n\trespond 1\n\ttls c.pem k.pem { client_auth { trusted_ca_cert_file "+ca+" } }\n}"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got = ConfigFor(cfg, t.TempDir())
	want = []Site{{Source: "Roamfile:3:2: tls", Names: []string{"localhost", "127.0.0.1", "::1"}, CertFile: "c.pem", KeyFile: "k.pem",
		CatchAll: true, ClientCAFiles: []string{ca}}}
	if !reflect.DeepEqual(got.Sites, want) {
		t.Fatalf("ConfigFor sites:\n got %+v\nwant %+v", got.Sites, want)
	}
	if err := Validate(got); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

// TestConfigForRedis: "storage redis" becomes Config.Redis, and the data
// directory stays (for the instance's own files), from data_dir or the
// default.
func TestConfigForRedis(t *testing.T) {
	cfg, err := configs.Parse("Roamfile", []byte(`{
	data_dir /local
	storage redis {
		address 10.0.0.7:6380
		db 3
		username rg
		password pw
		key_prefix eu
		tls on
		tls_ca /ca.pem
		tls_server_name redis.internal
		dial_timeout 2s
		lock_ttl 4s
	}
}
a.example.com {
	reverse_proxy 127.0.0.1:1
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := ConfigFor(cfg, "")
	want := &Redis{Address: "10.0.0.7:6380", DB: 3, Username: "rg", Password: "pw", KeyPrefix: "eu",
		TLS: true, TLSCAFile: "/ca.pem", TLSServerName: "redis.internal", DialTimeout: 2 * time.Second, LockTTL: 4 * time.Second}
	if !reflect.DeepEqual(got.Redis, want) || got.DataDir != "/local" {
		t.Fatalf("ConfigFor: Redis %+v, data dir %q; want %+v, /local", got.Redis, got.DataDir, want)
	}
	cfg.DataDir = ""
	if dd := ConfigFor(cfg, "").DataDir; dd != DefaultDataDir() {
		t.Errorf("data dir with storage redis %q, want the default %q", dd, DefaultDataDir())
	}
}
