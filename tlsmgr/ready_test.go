package tlsmgr

import (
	"os"
	"strings"
	"testing"
	"time"
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
		DataDir:     lingeringDir(t),
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

// lingeringDir is a data directory for a manager whose background ACME
// attempts may still write a lock file for a moment after Stop (certmagic
// gives no way to wait for them): removed at the end with retries, where
// t.TempDir's cleanup would fail the test on "directory not empty".
func lingeringDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "tlsmgr-acme-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if os.RemoveAll(dir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("could not remove %s", dir)
	})
	return dir
}
