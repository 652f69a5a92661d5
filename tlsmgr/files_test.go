package tlsmgr

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// certFixture is a self-signed certificate and its key, written to files.
type certFixture struct {
	certFile, keyFile string
	cert              *x509.Certificate
	certPEM, keyPEM   []byte
}

// writeSelfSigned writes a self-signed server certificate for names and its
// key (PKCS#8) to dir/<base>.crt and dir/<base>.key.
func writeSelfSigned(t *testing.T, dir, base string, names ...string) certFixture {
	t.Helper()
	key, keyPEM := newKeyPEM(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so that a pool holding it verifies it
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	f := certFixture{
		certFile: filepath.Join(dir, base+".crt"),
		keyFile:  filepath.Join(dir, base+".key"),
		cert:     cert,
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:   keyPEM,
	}
	writeFile(t, f.certFile, f.certPEM)
	writeFile(t, f.keyFile, f.keyPEM)
	return f
}

// newKeyPEM returns a new P-256 key and its PKCS#8 PEM encoding.
func newKeyPEM(t *testing.T) (crypto.Signer, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestManagerServesCertFiles(t *testing.T) {
	dir := t.TempDir()
	f := writeSelfSigned(t, dir, "site", "files.example")
	core, logs := observer.New(zap.WarnLevel)
	m, err := New(Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{Names: []string{"files.example", "not-in-cert.example"}, CertFile: f.certFile, KeyFile: f.keyFile},
			{Names: []string{"localhost"}},
		},
	}, zap.New(core))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Stop)
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	addr := serveTLS(t, m.TLSConfig())

	pool := x509.NewCertPool()
	pool.AddCert(f.cert)
	st, err := handshake(t, addr, &tls.Config{ServerName: "files.example", RootCAs: pool})
	if err != nil {
		t.Fatalf("handshake for the file certificate: %v", err)
	}
	if !st.PeerCertificates[0].Equal(f.cert) {
		t.Errorf("served %q, want the certificate file", st.PeerCertificates[0].DNSNames)
	}
	if _, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool()}); err != nil {
		t.Errorf("local CA name beside a certificate file: %v", err)
	}

	warned := logs.FilterMessage("certificate file does not cover site name").FilterField(zap.String("name", "not-in-cert.example"))
	if warned.Len() != 1 {
		t.Errorf("want one warning about not-in-cert.example, got logs %v", logs.All())
	}
}

func TestCheckCertFiles(t *testing.T) {
	dir := t.TempDir()
	good := writeSelfSigned(t, dir, "good", "good.example")
	other := writeSelfSigned(t, dir, "other", "other.example")
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("this is not PEM\n"))
	badDER := filepath.Join(dir, "bad-der.pem")
	writeFile(t, badDER, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))
	encrypted := filepath.Join(dir, "encrypted.pem")
	writeFile(t, encrypted, pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}}))
	combined := filepath.Join(dir, "combined.pem")
	writeFile(t, combined, append(slices.Clone(good.certPEM), good.keyPEM...))
	rsaKey := filepath.Join(dir, "rsa.key")
	writeFile(t, rsaKey, rsaPKCS1PEM(t))

	tests := []struct {
		name          string
		cert, key     string
		want          []string // substrings of the error; none: no error
		wantNotExist  bool
		notWantSubstr string
	}{
		{name: "matching pair", cert: good.certFile, key: good.keyFile},
		{name: "one file holding both", cert: combined, key: combined},
		{name: "missing certificate", cert: missing, key: good.keyFile, want: []string{`tls certificate "` + missing + `": no such file`}, wantNotExist: true},
		{name: "missing key", cert: good.certFile, key: missing, want: []string{`tls key "` + missing + `": no such file`}, wantNotExist: true},
		{name: "both missing", cert: missing, key: filepath.Join(dir, "nokey.pem"), want: []string{`tls certificate "` + missing + `"`, `tls key "` + filepath.Join(dir, "nokey.pem") + `"`}},
		{name: "garbage certificate", cert: garbage, key: good.keyFile, want: []string{`tls certificate "` + garbage + `": no PEM certificate`}},
		{name: "garbage key", cert: good.certFile, key: garbage, want: []string{`tls key "` + garbage + `": no PEM private key`}},
		{name: "undecodable certificate", cert: badDER, key: good.keyFile, want: []string{`tls certificate "` + badDER + `": certificate 1 of the chain`}},
		{name: "encrypted key", cert: good.certFile, key: encrypted, want: []string{`tls key "` + encrypted + `": encrypted private keys`}},
		{name: "mismatched key", cert: good.certFile, key: other.keyFile, want: []string{`tls key "` + other.keyFile + `" does not match certificate "` + good.certFile + `"`}},
		{name: "RSA key for an ECDSA certificate", cert: good.certFile, key: rsaKey, want: []string{"does not match"}},
		{name: "swapped", cert: good.keyFile, key: good.certFile, want: []string{"certificate and key swapped?"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckCertFiles(tt.cert, tt.key)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("CheckCertFiles: %v", err)
				}
				return
			}
			if !errorsContain(err, tt.want...) {
				t.Fatalf("CheckCertFiles: %v, want error containing %q", err, tt.want)
			}
			if strings.Count(err.Error(), missing) > 1 {
				t.Errorf("error names the path twice: %v", err)
			}
			if tt.wantNotExist && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v does not match fs.ErrNotExist", err)
			}
		})
	}
}

// TestStartReportsEveryCertFileError checks that Start reports all broken
// pairs at once, each with its path, and still serves the rest.
func TestStartReportsEveryCertFileError(t *testing.T) {
	dir := t.TempDir()
	good := writeSelfSigned(t, dir, "good", "good.example")
	other := writeSelfSigned(t, dir, "other", "other.example")
	missing := filepath.Join(dir, "certs", "site.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("garbage"))

	m := newTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{CertFile: missing, KeyFile: good.keyFile},
			{CertFile: garbage, KeyFile: good.keyFile},
			{CertFile: good.certFile, KeyFile: other.keyFile},
			{CertFile: other.certFile, KeyFile: other.keyFile},
			{Names: []string{"localhost"}},
		},
	})
	err := m.Start(t.Context())
	want := []string{
		`tls certificate "` + missing + `": no such file or directory`,
		`tls certificate "` + garbage + `": no PEM certificate`,
		`tls key "` + other.keyFile + `" does not match certificate "` + good.certFile + `"`,
	}
	if !errorsContain(err, want...) {
		t.Fatalf("Start: %v\nwant every one of %q", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Start error %v does not match fs.ErrNotExist", err)
	}

	// The good pair and the local name are served despite the others.
	addr := serveTLS(t, m.TLSConfig())
	pool := x509.NewCertPool()
	pool.AddCert(other.cert)
	if _, err := handshake(t, addr, &tls.Config{ServerName: "other.example", RootCAs: pool}); err != nil {
		t.Errorf("good pair: %v", err)
	}
	if _, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool()}); err != nil {
		t.Errorf("local name: %v", err)
	}
}

// rsaPKCS1PEM returns a new RSA key as a PKCS#1 PEM block.
func rsaPKCS1PEM(t *testing.T) []byte {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

func TestParsePrivateKeyPEMFormats(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	_, pkcs8 := newKeyPEM(t)
	for name, data := range map[string][]byte{
		"PKCS#8":        pkcs8,
		"PKCS#1 RSA":    rsaPKCS1PEM(t),
		"SEC 1 EC":      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
		"after a chain": append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0}}), pkcs8...),
	} {
		if _, err := parsePrivateKeyPEM(data); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
