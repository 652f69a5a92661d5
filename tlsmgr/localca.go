package tlsmgr

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"path"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

const (
	// localCAIssuerKey is the LocalCA's certmagic issuer key; its leaves are
	// stored under certificates/local/<name>/.
	localCAIssuerKey = "local"

	// localCALockName is the storage lock taken while creating the root, so
	// that processes sharing a data directory end up with one CA.
	localCALockName = "local_ca_local"

	// localCARootYears is the validity of a new root.
	localCARootYears = 10

	// leafBackdate is how far before issuance a leaf (and a new root) becomes
	// valid, to tolerate clients whose clocks run a little behind.
	leafBackdate = 5 * time.Minute
)

// Storage keys of the local CA's root, relative to the certmagic storage root.
var (
	localCARootCertKey = path.Join("local_ca", "local", "root.crt")
	localCARootKeyKey  = path.Join("local_ca", "local", "root.key")
)

// LocalCA is a certificate authority for development and internal names
// (localhost, IP addresses, *.internal and the like). Its root certificate
// and key live in certmagic storage, so restarts and several processes
// sharing a data directory use the same root. It implements
// certmagic.Issuer: certmagic generates each leaf's key, asks the LocalCA to
// sign the CSR, and stores, caches and renews the result like any other
// certificate.
//
// A LocalCA is safe for concurrent use; it never changes after creation.
type LocalCA struct {
	lifetime time.Duration     // validity of leaves, capped by the root's NotAfter
	root     *x509.Certificate // self-signed root
	rootPEM  []byte            // root as PEM, appended to every issued chain
	key      crypto.Signer     // root's private key
	now      func() time.Time  // clock; tests replace it
}

var _ certmagic.Issuer = (*LocalCA)(nil)

// Root returns the CA's root certificate. Callers must not modify it.
func (ca *LocalCA) Root() *x509.Certificate { return ca.root }

// RootPEM returns the CA's root certificate, PEM-encoded, for installing in
// a trust store.
func (ca *LocalCA) RootPEM() []byte { return slices.Clone(ca.rootPEM) }

// RootPool returns a new certificate pool holding only the CA's root, for
// clients that should trust it (tests, the demo client).
func (ca *LocalCA) RootPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	return pool
}

// IssuerKey returns "local", which names the storage directory of the CA's
// leaves (certificates/local/...).
func (ca *LocalCA) IssuerKey() string { return localCAIssuerKey }

// Issue signs a leaf certificate for the DNS names and IP addresses of csr.
// The leaf is valid from five minutes ago for the CA's leaf lifetime, but
// never beyond the root; the returned chain is the leaf followed by the root.
func (ca *LocalCA) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("local ca: csr signature: %w", err)
	}
	if len(csr.EmailAddresses) > 0 || len(csr.URIs) > 0 {
		return nil, errors.New("local ca: csr asks for email or uri names; only dns names and ip addresses are signed")
	}
	if len(csr.DNSNames) == 0 && len(csr.IPAddresses) == 0 {
		return nil, errors.New("local ca: csr has no dns names or ip addresses")
	}

	now := ca.now()
	notBefore := now.Add(-leafBackdate)
	if notBefore.Before(ca.root.NotBefore) {
		notBefore = ca.root.NotBefore
	}
	notAfter := now.Add(ca.lifetime)
	if notAfter.After(ca.root.NotAfter) {
		notAfter = ca.root.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("local ca: root expired at %s (delete local_ca/local from storage to create a new one)",
			ca.root.NotAfter.Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		DNSNames:              csr.DNSNames,
		IPAddresses:           csr.IPAddresses,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("local ca: sign leaf: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	chain = append(chain, ca.rootPEM...)
	return &certmagic.IssuedCertificate{Certificate: chain}, nil
}

// loadOrCreateLocalCA loads the local CA's root from storage, creating and
// storing a new one if there is none. Creation happens under storage's lock
// and re-checks storage once the lock is held, so concurrent processes
// sharing storage agree on one root.
func loadOrCreateLocalCA(ctx context.Context, storage certmagic.Storage, lifetime time.Duration, logger *zap.Logger) (*LocalCA, error) {
	ca, err := loadLocalCA(ctx, storage, lifetime)
	if !errors.Is(err, fs.ErrNotExist) {
		return ca, err // loaded, or broken in a way a new root must not paper over
	}

	if err := storage.Lock(ctx, localCALockName); err != nil {
		return nil, fmt.Errorf("lock local ca in storage: %w", err)
	}
	defer func() {
		if err := storage.Unlock(context.WithoutCancel(ctx), localCALockName); err != nil {
			logger.Error("unlock local ca in storage", zap.Error(err))
		}
	}()

	ca, err = loadLocalCA(ctx, storage, lifetime) // another process may have won the race
	if !errors.Is(err, fs.ErrNotExist) {
		return ca, err
	}
	ca, keyPEM, err := newLocalCA(lifetime, time.Now)
	if err != nil {
		return nil, err
	}
	// The key goes first: a root certificate in storage without its key is
	// an error on load, while a lone key is overwritten by the next creation.
	if err := storage.Store(ctx, localCARootKeyKey, keyPEM); err != nil {
		return nil, fmt.Errorf("store local ca key: %w", err)
	}
	if err := storage.Store(ctx, localCARootCertKey, ca.rootPEM); err != nil {
		return nil, fmt.Errorf("store local ca root: %w", err)
	}
	logger.Info("created local certificate authority",
		zap.String("root", ca.root.Subject.CommonName),
		zap.Time("not_after", ca.root.NotAfter),
		zap.String("storage_key", localCARootCertKey))
	return ca, nil
}

// LocalCARoot returns the PEM root certificate of the local CA kept in
// storage (a data directory's files, or a fleet's Redis), creating
// nothing; its error wraps fs.ErrNotExist when there is none.
func LocalCARoot(ctx context.Context, storage certmagic.Storage) ([]byte, error) {
	ca, err := loadLocalCA(ctx, storage, 0)
	if err != nil {
		return nil, err
	}
	return ca.RootPEM(), nil
}

// loadLocalCA loads the root from storage. Its error wraps fs.ErrNotExist
// only when there is no root certificate at all.
func loadLocalCA(ctx context.Context, storage certmagic.Storage, lifetime time.Duration) (*LocalCA, error) {
	certPEM, err := storage.Load(ctx, localCARootCertKey)
	if err != nil {
		return nil, fmt.Errorf("load local ca root %q: %w", localCARootCertKey, err)
	}
	keyPEM, err := storage.Load(ctx, localCARootKeyKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local ca root %q is present but its key %q is missing", localCARootCertKey, localCARootKeyKey)
	}
	if err != nil {
		return nil, fmt.Errorf("load local ca key %q: %w", localCARootKeyKey, err)
	}

	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("local ca root %q: no PEM certificate block", localCARootCertKey)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("local ca root %q: %w", localCARootCertKey, err)
	}
	if !root.IsCA {
		return nil, fmt.Errorf("local ca root %q is not a CA certificate", localCARootCertKey)
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("local ca key %q: %w", localCARootKeyKey, err)
	}
	if !publicKeysEqual(key.Public(), root.PublicKey) {
		return nil, fmt.Errorf("local ca key %q does not match root %q", localCARootKeyKey, localCARootCertKey)
	}
	return &LocalCA{
		lifetime: lifetime,
		root:     root,
		rootPEM:  pem.EncodeToMemory(block),
		key:      key,
		now:      time.Now,
	}, nil
}

// newLocalCA creates a new ECDSA P-256 root valid for ten years and returns
// the CA with its PKCS#8 PEM private key.
func newLocalCA(lifetime time.Duration, now func() time.Time) (*LocalCA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate local ca key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"roamgate"},
			CommonName:   fmt.Sprintf("roamgate Local Authority - %d ECC Root", t.Year()),
		},
		NotBefore:             t.Add(-leafBackdate),
		NotAfter:              t.AddDate(localCARootYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create local ca root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse new local ca root: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode local ca key: %w", err)
	}
	ca := &LocalCA{
		lifetime: lifetime,
		root:     root,
		rootPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:      key,
		now:      now,
	}
	return ca, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// serialLimit is 2^128: serial numbers carry 128 random bits (CA/B Forum
// Baseline Requirements §7.1 ask for at least 64).
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random, positive 128-bit certificate serial number.
func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, serialLimit)
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	if serial.Sign() == 0 {
		serial.SetInt64(1) // RFC 5280 §4.1.2.2: positive
	}
	return serial, nil
}
