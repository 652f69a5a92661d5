package tlsmgr

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLocalCAStorageLayout(t *testing.T) {
	dir := t.TempDir()
	before := time.Now()
	m := newTestManager(t, Config{DataDir: dir})

	certPEM, err := os.ReadFile(filepath.Join(dir, "local_ca", "local", "root.crt"))
	if err != nil {
		t.Fatalf("root certificate not in storage: %v", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "local_ca", "local", "root.key"))
	if err != nil {
		t.Fatalf("root key not in storage: %v", err)
	}
	if !bytes.Equal(certPEM, m.LocalCA().RootPEM()) {
		t.Error("stored root.crt differs from RootPEM()")
	}

	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("root.key is not a PKCS#8 PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("root.key: %v", err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok || ecKey.Curve != elliptic.P256() {
		t.Fatalf("root key is %T, want ECDSA P-256", key)
	}

	root := m.LocalCA().Root()
	if !ecKey.PublicKey.Equal(root.PublicKey) {
		t.Error("root.key does not match root.crt")
	}
	if !root.IsCA || root.MaxPathLen != 0 || !root.MaxPathLenZero {
		t.Errorf("root IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA limited to leaves", root.IsCA, root.MaxPathLen, root.MaxPathLenZero)
	}
	if root.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root key usage %v lacks CertSign", root.KeyUsage)
	}
	if want := "roamgate Local Authority - "; !strings.HasPrefix(root.Subject.CommonName, want) || !strings.HasSuffix(root.Subject.CommonName, " ECC Root") {
		t.Errorf("root CN = %q, want %q<year> ECC Root", root.Subject.CommonName, want)
	}
	if years := root.NotAfter.Sub(before).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("root valid for %.2f years, want 10", years)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if got := m.LocalCA().RootPool(); !got.Equal(m.LocalCA().RootPool()) {
		t.Error("RootPool differs between calls")
	}
}

func TestLocalCAPersistsAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	sites := []Site{{Names: []string{"localhost"}}}

	first := startTestManager(t, Config{DataDir: dir, Sites: sites})
	firstRoot := first.LocalCA().Root()
	first.Stop()

	second := startTestManager(t, Config{DataDir: dir, Sites: sites})
	if !second.LocalCA().Root().Equal(firstRoot) {
		t.Fatal("second Manager on the same data dir created a new root")
	}
	// What the restarted manager serves verifies against the first root.
	addr := serveTLS(t, second.TLSConfig())
	pool := x509.NewCertPool()
	pool.AddCert(firstRoot)
	if _, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: pool}); err != nil {
		t.Fatalf("handshake against the first root: %v", err)
	}
}

// TestLocalCASharedConcurrently starts several Managers at once on one data
// directory, as several processes sharing storage do: the storage lock makes
// them create one root, and certmagic's lock one leaf per name.
func TestLocalCASharedConcurrently(t *testing.T) {
	dir := t.TempDir()
	const n = 3
	managers := make([]*Manager, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m, err := New(Config{DataDir: dir, Sites: []Site{{Names: []string{"localhost", "app.internal"}}}}, testLogger(t))
			if err != nil {
				errs[i] = err
				return
			}
			managers[i] = m
			errs[i] = m.Start(t.Context())
		})
	}
	wg.Wait()
	for i, m := range managers {
		if m != nil {
			t.Cleanup(m.Stop)
		}
		if errs[i] != nil {
			t.Fatalf("manager %d: %v", i, errs[i])
		}
	}

	root := managers[0].LocalCA().Root()
	for i, m := range managers[1:] {
		if !m.LocalCA().Root().Equal(root) {
			t.Errorf("manager %d has a different root", i+1)
		}
	}
	pool := managers[0].LocalCA().RootPool()
	for i, m := range managers {
		addr := serveTLS(t, m.TLSConfig())
		if _, err := handshake(t, addr, &tls.Config{ServerName: "app.internal", RootCAs: pool}); err != nil {
			t.Errorf("manager %d: handshake: %v", i, err)
		}
	}
}

// TestLocalCANewRootReplacesOldLeaves is a regression test: after local_ca/
// was deleted (to get a new root), the leaves left in certificates/ were
// loaded and served although no client trusting the new root accepts them.
func TestLocalCANewRootReplacesOldLeaves(t *testing.T) {
	dir := t.TempDir()
	sites := []Site{{Names: []string{"localhost"}}}
	first := startTestManager(t, Config{DataDir: dir, Sites: sites})
	first.Stop()
	if err := os.RemoveAll(filepath.Join(dir, "local_ca")); err != nil {
		t.Fatal(err)
	}

	second := startTestManager(t, Config{DataDir: dir, Sites: sites})
	if second.LocalCA().Root().Equal(first.LocalCA().Root()) {
		t.Fatal("root was not recreated")
	}
	addr := serveTLS(t, second.TLSConfig())
	if _, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: second.LocalCA().RootPool()}); err != nil {
		t.Fatalf("handshake against the new root: %v", err)
	}
}

func TestLocalCABrokenStorage(t *testing.T) {
	// A data dir with a working CA, to copy pieces from.
	good := t.TempDir()
	newTestManager(t, Config{DataDir: good}).Stop()
	rootCrt, err := os.ReadFile(filepath.Join(good, "local_ca", "local", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	rootKey, err := os.ReadFile(filepath.Join(good, "local_ca", "local", "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	_, otherKeyPEM := newKeyPEM(t)

	tests := []struct {
		name       string
		crt, key   []byte // nil: absent
		wantErr    string // empty: New succeeds
		wantSameCA bool
	}{
		{name: "both present", crt: rootCrt, key: rootKey, wantSameCA: true},
		{name: "key without certificate is replaced", key: rootKey},
		{name: "certificate without key", crt: rootCrt, wantErr: `root.key" is missing`},
		{name: "garbage certificate", crt: []byte("garbage"), key: rootKey, wantErr: "no PEM certificate block"},
		{name: "garbage key", crt: rootCrt, key: []byte("garbage"), wantErr: `local ca key "local_ca/local/root.key": no PEM private key`},
		{name: "key of another CA", crt: rootCrt, key: otherKeyPEM, wantErr: "does not match root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			caDir := filepath.Join(dir, "local_ca", "local")
			if err := os.MkdirAll(caDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tt.crt != nil {
				writeFile(t, filepath.Join(caDir, "root.crt"), tt.crt)
			}
			if tt.key != nil {
				writeFile(t, filepath.Join(caDir, "root.key"), tt.key)
			}
			m, err := New(Config{DataDir: dir}, testLogger(t))
			if tt.wantErr != "" {
				if err == nil {
					m.Stop()
					t.Fatalf("New succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer m.Stop()
			if same := bytes.Equal(m.LocalCA().RootPEM(), rootCrt); same != tt.wantSameCA {
				t.Errorf("reused the stored root: %v, want %v", same, tt.wantSameCA)
			}
		})
	}
}

func TestLocalCAIssue(t *testing.T) {
	now := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	const lifetime = 24 * time.Hour
	ca, _, err := newLocalCA(lifetime, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if got := ca.IssuerKey(); got != "local" {
		t.Errorf("IssuerKey() = %q, want local", got)
	}

	t.Run("names and validity", func(t *testing.T) {
		csr := newCSR(t, &x509.CertificateRequest{
			DNSNames:    []string{"app.internal", "*.app.internal"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		})
		leaf, chain := issue(t, ca, csr)
		if len(chain) != 2 || !chain[1].Equal(ca.Root()) {
			t.Fatalf("chain is %d certificates, want leaf + root", len(chain))
		}
		if got, want := leaf.NotBefore, now.Add(-5*time.Minute); !got.Equal(want) {
			t.Errorf("NotBefore = %s, want %s", got, want)
		}
		if got, want := leaf.NotAfter, now.Add(lifetime); !got.Equal(want) {
			t.Errorf("NotAfter = %s, want %s", got, want)
		}
		if leaf.IsCA {
			t.Error("leaf is a CA")
		}
		if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
			t.Errorf("serial %s is not a positive 128-bit number", leaf.SerialNumber)
		}
		for _, name := range []string{"app.internal", "x.app.internal", "127.0.0.1", "::1"} {
			_, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), DNSName: name, CurrentTime: now})
			if err != nil {
				t.Errorf("leaf does not verify for %s: %v", name, err)
			}
		}
		other, _ := issue(t, ca, csr)
		if other.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			t.Error("two leaves share a serial number")
		}
	})

	t.Run("never outlives the root", func(t *testing.T) {
		late := *ca
		late.now = func() time.Time { return ca.Root().NotAfter.Add(-time.Hour) }
		leaf, _ := issue(t, &late, newCSR(t, &x509.CertificateRequest{DNSNames: []string{"localhost"}}))
		if !leaf.NotAfter.Equal(ca.Root().NotAfter) {
			t.Errorf("NotAfter = %s, want the root's %s", leaf.NotAfter, ca.Root().NotAfter)
		}
	})

	bad := func() *x509.CertificateRequest {
		csr := newCSR(t, &x509.CertificateRequest{DNSNames: []string{"localhost"}})
		csr.Signature[len(csr.Signature)/2] ^= 0xff
		return csr
	}()
	expired := *ca
	expired.now = func() time.Time { return ca.Root().NotAfter.Add(time.Hour) }
	for _, tt := range []struct {
		name string
		ca   *LocalCA
		csr  *x509.CertificateRequest
		want string
	}{
		{"bad signature", ca, bad, "csr signature"},
		{"no names", ca, newCSR(t, &x509.CertificateRequest{}), "no dns names or ip addresses"},
		{"email", ca, newCSR(t, &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}}), "email or uri"},
		{"uri", ca, newCSR(t, &x509.CertificateRequest{DNSNames: []string{"a.internal"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "x"}}}), "email or uri"},
		{"expired root", &expired, newCSR(t, &x509.CertificateRequest{DNSNames: []string{"localhost"}}), "root expired"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.ca.Issue(t.Context(), tt.csr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Issue: %v, want error containing %q", err, tt.want)
			}
		})
	}
}

// issue has ca sign csr and returns the parsed leaf and chain.
func issue(t *testing.T, ca *LocalCA, csr *x509.CertificateRequest) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	ic, err := ca.Issue(t.Context(), csr)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	var chain []*x509.Certificate
	for rest := ic.Certificate; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("issued chain: %v", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		t.Fatal("issued chain is empty")
	}
	return chain[0], chain
}

// newCSR signs tmpl with a new P-256 key.
func newCSR(t *testing.T, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
