package tlsmgr

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// localSites returns one local-CA site per name.
func localSites(names ...string) []Site {
	sites := make([]Site, len(names))
	for i, name := range names {
		sites[i] = Site{Source: "Roamfile:" + name, Names: []string{name}, Issuer: IssuerLocal}
	}
	return sites
}

// leafFor handshakes with addr for name, verified against roots, and
// returns the served leaf; it fails the test if the handshake fails.
func leafFor(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	st, err := handshake(t, addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	return st.PeerCertificates[0]
}

// managedCert reports whether the cache holds a certificate that lists
// name: a managed one, in these tests (which give certificate files other
// names).
func managedCert(m *Manager, name string) bool { return m.hasCertFor(name) }

// TestUpdateLocalNames adds and removes local-CA names without a restart:
// the added one is served as Update returns, the removed one is unloaded
// (its handshakes fail and are logged as for a name no site serves), the
// kept one keeps its certificate.
func TestUpdateLocalNames(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	cfg := Config{DataDir: t.TempDir(), Sites: localSites("kept.internal", "gone.internal")}
	m, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, m.TLSConfig())
	roots := m.LocalCA().RootPool()
	kept := leafFor(t, addr, "kept.internal", roots)
	leafFor(t, addr, "gone.internal", roots)

	cfg.Sites = localSites("kept.internal", "new.internal")
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if got := leafFor(t, addr, "new.internal", roots); !strings.Contains(strings.Join(got.DNSNames, " "), "new.internal") {
		t.Errorf("served %q for new.internal", got.DNSNames)
	}
	if got := leafFor(t, addr, "kept.internal", roots); !got.Equal(kept) {
		t.Error("kept.internal got a new certificate; want the one it had")
	}
	if _, err := handshake(t, addr, &tls.Config{ServerName: "gone.internal", RootCAs: roots}); err == nil {
		t.Error("handshake for a removed name succeeded")
	}
	if managedCert(m, "gone.internal") {
		t.Error("the removed name's certificate is still managed in the cache")
	}
	if logs.FilterMessage("tls handshake for a name no site serves").FilterField(zap.String("server_name", "gone.internal")).Len() != 1 {
		t.Errorf("want one no-certificate line for gone.internal, got %v", logs.All())
	}
	if err := m.CertificatesReady(); err != nil {
		t.Errorf("CertificatesReady after Update: %v", err)
	}
}

// TestUpdateReplacedCertFile serves a certificate file's new contents
// after an Update with the same config.
func TestUpdateReplacedCertFile(t *testing.T) {
	dir := t.TempDir()
	before := writeSelfSigned(t, dir, "site", "files.example")
	cfg := Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"files.example"}, CertFile: before.certFile, KeyFile: before.keyFile}}}
	m := startTestManager(t, cfg)
	addr := serveTLS(t, m.TLSConfig())
	pool := x509.NewCertPool()
	pool.AddCert(before.cert)
	if got := leafFor(t, addr, "files.example", pool); !got.Equal(before.cert) {
		t.Fatal("the certificate file is not served")
	}

	after := writeSelfSigned(t, dir, "site", "files.example") // same paths
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	pool.AddCert(after.cert)
	// Every handshake gets the new certificate: the old one is unloaded.
	for range 5 {
		if got := leafFor(t, addr, "files.example", pool); !got.Equal(after.cert) {
			t.Fatal("the replaced certificate file's old certificate is served")
		}
	}
	if n := len(m.cache.AllMatchingCertificates("files.example")); n != 1 {
		t.Errorf("%d certificates cached for files.example, want 1", n)
	}
}

// TestUpdateFailureChangesNothing checks that an Update with a missing
// certificate file, or an invalid config, fails with the path and the
// site's position and leaves the running config serving.
func TestUpdateFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	f := writeSelfSigned(t, dir, "site", "files.example")
	cfg := Config{DataDir: t.TempDir(), Sites: append(localSites("old.internal"),
		Site{Source: "Roamfile:3:1", Names: []string{"files.example"}, CertFile: f.certFile, KeyFile: f.keyFile})}
	m := startTestManager(t, cfg)
	addr := serveTLS(t, m.TLSConfig())
	roots := m.LocalCA().RootPool()
	oldLeaf := leafFor(t, addr, "old.internal", roots)
	pool := x509.NewCertPool()
	pool.AddCert(f.cert)

	missing := filepath.Join(dir, "missing.crt")
	bad := cfg
	bad.Sites = append(localSites("new.internal"),
		Site{Source: "Roamfile:3:1", Names: []string{"files.example"}, CertFile: missing, KeyFile: f.keyFile})
	err := m.Update(t.Context(), bad)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("Update with a missing certificate file: %v; want an error naming it", err)
	}

	invalid := cfg
	invalid.Sites = append(localSites("new.internal"), Site{Source: "Roamfile:7:1", Names: []string{"a b"}})
	if err := m.Update(t.Context(), invalid); err == nil || !strings.Contains(err.Error(), "Roamfile:7:1: ") {
		t.Fatalf("Update with an invalid name: %v; want an error at Roamfile:7:1", err)
	}

	if got := leafFor(t, addr, "old.internal", roots); !got.Equal(oldLeaf) {
		t.Error("old.internal's certificate changed")
	}
	if got := leafFor(t, addr, "files.example", pool); !got.Equal(f.cert) {
		t.Error("the certificate file is no longer served")
	}
	if _, err := handshake(t, addr, &tls.Config{ServerName: "new.internal", RootCAs: roots}); err == nil {
		t.Error("a failed Update's new name is served")
	}
	if managedCert(m, "new.internal") {
		t.Error("a failed Update left its new name's certificate in the cache")
	}
}

// TestUpdateNeedsRestart refuses the settings that only New applies.
func TestUpdateNeedsRestart(t *testing.T) {
	cfg := Config{DataDir: t.TempDir(), Sites: localSites("localhost")}
	m := startTestManager(t, cfg)
	other := cfg
	other.DataDir = t.TempDir()
	other.LeafLifetime = 2 * time.Hour
	other.Redis = &Redis{Address: "127.0.0.1:6379", Password: "secret"}
	other.Sites = localSites("localhost", "new.internal")
	err := m.Update(t.Context(), other)
	if !errorsContain(err, "tls data directory changed from", "tls leaf lifetime changed from 0s to 2h0m0s, which needs a restart",
		"tls storage changed from files to redis {Address:127.0.0.1:6379") {
		t.Fatalf("Update: %v", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("the refusal shows the Redis password: %v", err)
	}
	if m.plan().routes["new.internal"] != nil {
		t.Error("a refused Update was applied")
	}
}

// TestUpdateBeforeStartAndAfterStop checks Update's preconditions.
func TestUpdateBeforeStartAndAfterStop(t *testing.T) {
	cfg := Config{DataDir: t.TempDir(), Sites: localSites("localhost")}
	m := newTestManager(t, cfg)
	if err := m.Update(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "not started") {
		t.Errorf("Update before Start: %v", err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	if err := m.Update(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Update after Stop: %v", err)
	}
}

// TestUpdateClientAuth applies a site's new client CAs to the handshakes
// that follow the Update, on a TLS config handed out before it.
func TestUpdateClientAuth(t *testing.T) {
	pki := newClientPKI(t, t.TempDir(), "clients-ca")
	cfg := Config{DataDir: t.TempDir(), Sites: localSites("api.svc.internal")}
	m := startTestManager(t, cfg)
	addr := serveTLS(t, m.TLSConfig())
	roots := m.LocalCA().RootPool()
	leafFor(t, addr, "api.svc.internal", roots)

	cfg.Sites[0].ClientCAFiles = []string{pki.caFile}
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	// TLS 1.3 reports a refused client certificate after the handshake,
	// at the first read.
	if err := readAfterHandshake(addr, &tls.Config{ServerName: "api.svc.internal", RootCAs: roots}); err == nil {
		t.Error("handshake without a client certificate succeeded after client CAs were added")
	}
	withCert := &tls.Config{ServerName: "api.svc.internal", RootCAs: roots, Certificates: []tls.Certificate{pki.leaf}}
	if err := readAfterHandshake(addr, withCert); err != nil {
		t.Errorf("handshake with a client certificate: %v", err)
	}
	if err := m.VerifyClientCert([]string{pki.caFile}, &tls.ConnectionState{}); !errors.Is(err, ErrClientCertRequired) || strings.Contains(err.Error(), "no site's") {
		t.Errorf("VerifyClientCert with the new site's files: %v", err)
	}

	cfg.Sites[0].ClientCAFiles = nil
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := readAfterHandshake(addr, &tls.Config{ServerName: "api.svc.internal", RootCAs: roots}); err != nil {
		t.Errorf("handshake without a client certificate after client CAs were removed: %v", err)
	}
}

// readAfterHandshake handshakes with addr and reads once: the server hangs
// up after its handshake (io.EOF, a success), or has refused the client's
// certificate (an alert).
func readAfterHandshake(addr string, cfg *tls.Config) error {
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if err != nil && strings.Contains(err.Error(), "EOF") {
		return nil
	}
	return err
}

// TestUpdateConcurrentHandshakes runs handshakes for names that every
// config has while Updates add and remove other names: none fails.
func TestUpdateConcurrentHandshakes(t *testing.T) {
	dir := t.TempDir()
	f := writeSelfSigned(t, dir, "site", "files.example")
	fileSite := Site{Names: []string{"files.example"}, CertFile: f.certFile, KeyFile: f.keyFile}
	cfg := Config{DataDir: t.TempDir(), Sites: append(localSites("a.internal", "b.internal"), fileSite)}
	m := startTestManager(t, cfg)
	addr := serveTLS(t, m.TLSConfig())
	roots := m.LocalCA().RootPool()
	roots.AddCert(f.cert)

	stop := make(chan struct{})
	var failures atomic.Int64
	var wg sync.WaitGroup
	for _, name := range []string{"a.internal", "b.internal", "files.example"} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := handshake(t, addr, &tls.Config{ServerName: name, RootCAs: roots}); err != nil {
					failures.Add(1)
					t.Errorf("handshake for %s during Updates: %v", name, err)
					return
				}
			}
		})
	}
	for i := range 20 {
		next := cfg
		next.Sites = append(localSites("a.internal", "b.internal"), fileSite)
		if i%2 == 0 {
			next.Sites = append(next.Sites, localSites("extra.internal")...)
		}
		if err := m.Update(t.Context(), next); err != nil {
			t.Errorf("Update %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if failures.Load() == 0 && managedCert(m, "extra.internal") {
		t.Error("extra.internal is still managed after the last Update removed it")
	}
}

// TestUpdateACME keeps an ACME name across an Update without a new order,
// obtains a new one in the background (one order), and unloads a removed
// one.
func TestUpdateACME(t *testing.T) {
	env := newACMEEnv(t, 0)
	kept, added, removed := uniqueName("kept"), uniqueName("added"), uniqueName("removed")
	cfg := env.config(t, Site{Source: "Roamfile:1:1", Names: []string{kept, removed}})
	m, addr := env.start(t, cfg)
	roots := env.ca.IssuingRoots()
	keptLeaf := waitForCert(t, addr, kept, roots)
	waitForCert(t, addr, removed, roots)

	cfg.Sites = []Site{{Source: "Roamfile:1:1", Names: []string{kept, added}}}
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := m.CertificatesReady(); err != nil && !strings.Contains(err.Error(), added) {
		t.Errorf("CertificatesReady: %v; want %s pending or nothing", err, added)
	}
	waitForCert(t, addr, added, roots)
	if got := leafFor(t, addr, kept, roots); !got.Equal(keptLeaf) {
		t.Error("the kept name got a new certificate")
	}
	if _, err := handshake(t, addr, &tls.Config{ServerName: removed, RootCAs: roots}); err == nil {
		t.Error("handshake for the removed name succeeded")
	}
	if managedCert(m, removed) {
		t.Error("the removed name's certificate is still managed")
	}
	waitFor(t, 10*time.Second, "readiness", func() bool { return m.CertificatesReady() == nil })
	for name, want := range map[string]int{kept: 1, added: 1, removed: 1} {
		if n := env.ca.Orders(name); n != want {
			t.Errorf("Pebble got %d orders for %s, want %d", n, name, want)
		}
	}
}

// TestUpdateOnDemand applies a changed on-demand site to decisions at the
// next handshake, and unloads the certificates obtained on demand for the
// names the new config no longer allows, as when the site goes.
func TestUpdateOnDemand(t *testing.T) {
	ask := newAskServer(t, "a.dyn.internal", "b.dyn.internal")
	cfg := Config{
		DataDir:     t.TempDir(),
		Sites:       append(localSites("localhost"), Site{Names: []string{"*.dyn.internal"}, OnDemand: true, Issuer: IssuerLocal}),
		OnDemandAsk: ask.url,
	}
	m := startTestManager(t, cfg)
	addr := serveTLS(t, m.TLSConfig())
	roots := m.LocalCA().RootPool()
	if _, err := handshakeSlow(addr, &tls.Config{ServerName: "a.dyn.internal", RootCAs: roots}); err != nil {
		t.Fatalf("on-demand handshake: %v", err)
	}

	cfg.Sites[1].Names = []string{"b.dyn.internal"}
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if managedCert(m, "a.dyn.internal") {
		t.Error("a.dyn.internal, no longer allowed, is still cached")
	}
	if _, err := handshakeSlow(addr, &tls.Config{ServerName: "a.dyn.internal", RootCAs: roots}); err == nil {
		t.Error("handshake for a name the site no longer matches succeeded")
	}
	if _, err := handshakeSlow(addr, &tls.Config{ServerName: "b.dyn.internal", RootCAs: roots}); err != nil {
		t.Errorf("handshake for the site's new name: %v", err)
	}

	cfg.Sites, cfg.OnDemandAsk = cfg.Sites[:1], ""
	if err := m.Update(t.Context(), cfg); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if managedCert(m, "b.dyn.internal") {
		t.Error("b.dyn.internal is still cached after its site was removed")
	}
	if _, err := handshakeSlow(addr, &tls.Config{ServerName: "b.dyn.internal", RootCAs: roots}); err == nil {
		t.Error("handshake for a removed on-demand site succeeded")
	}
	if n := ask.count("a.dyn.internal"); n != 1 {
		t.Errorf("ask endpoint asked %d times about a.dyn.internal, want 1 (none after its removal)", n)
	}
}
