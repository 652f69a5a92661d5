package tlsmgr

import (
	"strings"
	"testing"
)

// TestCertificatesReady: not ready before Start, ready once the local CA's
// certificates are loaded, and not ready while an ACME name waits for its
// certificate (its CA here never answers), naming it; on-demand names do
// not count.
func TestCertificatesReady(t *testing.T) {
	m := newTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites:   []Site{{Names: []string{"localhost", "127.0.0.1", "::1", "*.svc.internal"}}},
	})
	if err := m.CertificatesReady(); err == nil || !strings.Contains(err.Error(), "not loaded yet") {
		t.Fatalf("before Start: %v", err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := m.CertificatesReady(); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	m.Stop()
	if err := m.CertificatesReady(); err == nil {
		t.Fatal("ready after Stop")
	}

	const ca = "https://127.0.0.1:1/directory" // nothing listens on port 1
	acme := startTestManager(t, Config{
		DataDir:     t.TempDir(),
		OnDemandAsk: "http://127.0.0.1:1/ask",
		Sites: []Site{
			{Names: []string{"localhost"}},
			{Names: []string{"app.example.com"}, Issuer: IssuerACME, ACME: ACME{CA: ca}},
			{Names: []string{"later.example.com"}, Issuer: IssuerACME, ACME: ACME{CA: ca}, OnDemand: true},
		},
	})
	err := acme.CertificatesReady()
	if want := "no certificate yet for app.example.com (acme " + ca + ")"; err == nil || err.Error() != want {
		t.Fatalf("ACME name pending: %v, want %q", err, want)
	}
}
