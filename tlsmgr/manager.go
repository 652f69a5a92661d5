package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

const (
	// DefaultLeafLifetime is the validity of local-CA leaf certificates when
	// Config.LeafLifetime is zero.
	DefaultLeafLifetime = 7 * 24 * time.Hour

	// minLeafLifetime keeps leaves renewable: certmagic checks for renewal
	// every 10 minutes (certmagic.DefaultRenewCheckInterval) and renews in
	// the last third of a certificate's life, so a shorter leaf could expire
	// between two checks.
	minLeafLifetime = time.Hour

	// localCASetupTimeout bounds how long New waits for the local CA's
	// storage lock (a stale FileStorage lock is taken over after 10s).
	localCASetupTimeout = time.Minute

	// acmeTLS1Protocol is the ALPN protocol of ACME's TLS-ALPN-01 challenge
	// (RFC 8737 §6.2); certmagic answers it from GetCertificate.
	acmeTLS1Protocol = "acme-tls/1"
)

// Issuer selects where the certificates of a site's names come from.
type Issuer int

const (
	// IssuerAuto chooses per name. Today every name gets the local CA; once
	// ACME is supported, public names will get ACME and the rest (localhost,
	// IP addresses, *.internal, ...) the local CA, as Caddy does.
	IssuerAuto Issuer = iota
	// IssuerLocal issues every name from the local CA.
	IssuerLocal
)

// String returns the issuer's Roamfile spelling.
func (i Issuer) String() string {
	switch i {
	case IssuerAuto:
		return "auto"
	case IssuerLocal:
		return "local"
	default:
		return fmt.Sprintf("Issuer(%d)", int(i))
	}
}

// Config configures a Manager.
type Config struct {
	// DataDir is the root of certmagic's FileStorage: issued certificates
	// (certificates/), the local CA (local_ca/) and storage locks (locks/).
	// Processes that share it share certificates and the CA. Required; see
	// DefaultDataDir.
	DataDir string

	// Sites lists what to serve. Each name may appear in one site only.
	Sites []Site

	// DefaultServerName is the name whose certificate answers handshakes
	// with no SNI (when no certificate matches the local IP address either)
	// or with an SNI that matches nothing. Empty: such handshakes fail.
	DefaultServerName string

	// LeafLifetime is the validity of local-CA leaf certificates; at least
	// one hour. Zero means DefaultLeafLifetime (7 days).
	LeafLifetime time.Duration
}

// Site is one group of names with one certificate source.
type Site struct {
	// Names are host names (possibly "*.example.com"), "localhost" and IP
	// literals. Matching is case-insensitive.
	Names []string

	// Issuer chooses who issues certificates for Names. The zero value is
	// IssuerAuto.
	Issuer Issuer

	// CertFile and KeyFile, when both set, name a PEM certificate chain and
	// its private key to serve instead of issuing; Names are then
	// informative only (a warning is logged if the certificate does not
	// cover one). Setting only one of them is an error.
	CertFile, KeyFile string
}

// Manager owns one certmagic cache and config (never certmagic.Default), the
// local CA, and the certificate files of a Config. It hands the proxy a TLS
// config for TCP and one for QUIC that serve the same certificates.
//
// Create it with New, load and issue certificates with Start, and release
// the cache's goroutines with Stop. The TLS configs may be handed out before
// Start; handshakes fail until certificates are loaded.
type Manager struct {
	logger      *zap.Logger
	storage     certmagic.Storage
	ca          *LocalCA
	plan        plan
	defaultName string            // normalized Config.DefaultServerName
	cache       *certmagic.Cache  // owned; Stop stops it
	magic       *certmagic.Config // serves every certificate in cache; issues local-CA names
	tcpTLS      *tls.Config       // template of TLSConfig
	quicTLS     *tls.Config       // template of QUICTLSConfig

	mu      sync.Mutex // guards the following
	started bool
	stopped bool
}

// plan is what Start does, derived once from a validated Config.
type plan struct {
	files []certFiles // served as they are
	local []string    // normalized names issued by the local CA
}

// certFiles is a certificate/key file pair from a Site.
type certFiles struct {
	cert, key string
	names     []string // normalized; informative
}

// New validates cfg, opens the local CA in cfg.DataDir (creating it if
// absent) and builds the certmagic cache and config. It issues nothing and
// reads no certificate files; Start does. A nil logger discards logs.
func New(cfg Config, logger *zap.Logger) (*Manager, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	p, defaultName, err := cfg.plan()
	if err != nil {
		return nil, err
	}
	lifetime := cfg.LeafLifetime
	if lifetime == 0 {
		lifetime = DefaultLeafLifetime
	}

	log := logger.Named("tls")
	storage := &certmagic.FileStorage{Path: cfg.DataDir}
	ctx, cancel := context.WithTimeout(context.Background(), localCASetupTimeout)
	defer cancel()
	ca, err := loadOrCreateLocalCA(ctx, storage, lifetime, log)
	if err != nil {
		return nil, err
	}

	m := &Manager{logger: log, storage: storage, ca: ca, plan: p, defaultName: defaultName}
	var magic *certmagic.Config
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		// One config serves and maintains every certificate today. When
		// sites get different issuers (ACME), each issuer gets a Config on
		// this same cache and this callback picks one by the cert's names.
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           log,
	})
	magic = certmagic.New(m.cache, certmagic.Config{
		Storage:            storage,
		Logger:             log,
		Issuers:            []certmagic.Issuer{ca},
		DefaultServerName:  defaultName, // empty SNI
		FallbackServerName: defaultName, // SNI that matches no certificate
	})
	m.magic = magic

	m.tcpTLS = magic.TLSConfig() // GetCertificate, and NextProtos ["acme-tls/1"]
	m.tcpTLS.NextProtos = []string{"h2", "http/1.1", acmeTLS1Protocol}
	m.tcpTLS.MinVersion = tls.VersionTLS12
	m.quicTLS = magic.TLSConfig()
	m.quicTLS.NextProtos = []string{"h3"}   // RFC 9114 §3.1; acme-tls/1 is TCP-only
	m.quicTLS.MinVersion = tls.VersionTLS13 // RFC 9001 §4.2
	return m, nil
}

// Start loads every certificate/key file pair, then loads or issues the
// local-CA certificates of all local names, synchronously (milliseconds per
// name). The errors of all file pairs are joined; each names its path.
// Start may be called once, and not after Stop.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.stopped:
		m.mu.Unlock()
		return errors.New("start tls manager: manager is stopped")
	case m.started:
		m.mu.Unlock()
		return errors.New("start tls manager: already started")
	}
	m.started = true
	m.mu.Unlock()

	var errs []error
	for _, f := range m.plan.files {
		if err := m.cacheFiles(ctx, f); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.manageLocal(ctx, m.plan.local); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if m.defaultName != "" && !m.hasCertFor(m.defaultName) {
		// certmagic looks the default name up exactly, not through wildcards.
		m.logger.Warn("no certificate carries the default server name; handshakes without a matching SNI will fail",
			zap.String("default_server_name", m.defaultName))
	}
	m.logger.Info("certificates ready",
		zap.Int("cert_files", len(m.plan.files)),
		zap.Strings("local_ca_names", m.plan.local))
	return nil
}

// TLSConfig returns a new TLS config for the TCP listener: certificates from
// the cache, ALPN h2, http/1.1 and acme-tls/1 (so that ACME's TLS-ALPN-01
// challenge can be answered), TLS 1.2 or later.
func (m *Manager) TLSConfig() *tls.Config { return cloneTLSConfig(m.tcpTLS) }

// QUICTLSConfig returns a new TLS config for the HTTP/3 listener: the same
// certificates as TLSConfig, ALPN h3 only, TLS 1.3.
func (m *Manager) QUICTLSConfig() *tls.Config { return cloneTLSConfig(m.quicTLS) }

// cloneTLSConfig returns a copy of c that shares nothing a caller may
// change: tls.Config.Clone copies slices such as NextProtos by reference.
func cloneTLSConfig(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = slices.Clone(c.NextProtos)
	return c
}

// LocalCA returns the manager's local certificate authority.
func (m *Manager) LocalCA() *LocalCA { return m.ca }

// Stop stops the certificate cache's maintenance goroutine (renewals, OCSP
// refreshes) and waits for it to exit. TLS configs already handed out keep
// serving the cached certificates, which are no longer renewed. Stop is
// idempotent and safe for concurrent use.
func (m *Manager) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	m.stopped = true
	m.cache.Stop()
}

// cacheFiles loads one certificate/key file pair into the cache.
func (m *Manager) cacheFiles(ctx context.Context, f certFiles) error {
	// Read and check once, then hand certmagic the same bytes (rather than
	// CacheUnmanagedCertificatePEMFile, which reads the files again and
	// reports parse errors without a path).
	pair, err := loadCertFiles(f.cert, f.key)
	if err != nil {
		return err
	}
	if _, err := m.magic.CacheUnmanagedCertificatePEMBytes(ctx, pair.certPEM, pair.keyPEM, nil); err != nil {
		return fmt.Errorf("tls certificate %q: %w", f.cert, err)
	}
	log := m.logger.With(zap.String("cert_file", f.cert))
	if time.Now().After(pair.leaf.NotAfter) {
		log.Warn("certificate file has expired", zap.Time("not_after", pair.leaf.NotAfter))
	}
	for _, name := range f.names {
		if !certCovers(pair.leaf, name) {
			log.Warn("certificate file does not cover site name", zap.String("name", name))
		}
	}
	return nil
}

// manageLocal loads or issues the local-CA certificates of names.
func (m *Manager) manageLocal(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	for _, name := range names {
		m.dropForeignLeaf(ctx, name)
	}
	if err := m.magic.ManageSync(ctx, names); err != nil {
		return fmt.Errorf("local ca certificates: %w", err)
	}
	return nil
}

// dropForeignLeaf deletes name's stored local-CA leaf if the current root did
// not sign it, as after local_ca/ was deleted to get a new root. certmagic
// would otherwise load and serve the old leaf, which clients trusting the new
// root reject, until it came up for renewal. ManageSync then issues afresh.
func (m *Manager) dropForeignLeaf(ctx context.Context, name string) {
	key := certmagic.StorageKeys.SiteCert(localCAIssuerKey, name)
	data, err := m.storage.Load(ctx, key)
	if err != nil {
		return // none yet (ManageSync issues one), or unreadable (ManageSync reports it)
	}
	if leaf, err := parseCertificatePEM(data); err == nil && leaf.CheckSignatureFrom(m.ca.root) == nil {
		return
	}
	m.logger.Warn("replacing certificate not signed by the current local ca",
		zap.String("identifier", name),
		zap.String("storage_key", key))
	if err := m.storage.Delete(ctx, certmagic.StorageKeys.CertsSitePrefix(localCAIssuerKey, name)); err != nil {
		m.logger.Error("delete certificate not signed by the current local ca",
			zap.String("identifier", name),
			zap.Error(err))
	}
}

// hasCertFor reports whether a cached certificate lists name verbatim.
func (m *Manager) hasCertFor(name string) bool {
	return slices.ContainsFunc(m.cache.AllMatchingCertificates(name), func(c certmagic.Certificate) bool {
		return slices.Contains(c.Names, name)
	})
}

// certCovers reports whether leaf is valid for name, including a wildcard
// name listed verbatim in the certificate.
func certCovers(leaf *x509.Certificate, name string) bool {
	if leaf.VerifyHostname(name) == nil {
		return true
	}
	return slices.ContainsFunc(leaf.DNSNames, func(dns string) bool { return strings.EqualFold(dns, name) })
}

// plan validates cfg and returns what Start has to do, and the normalized
// default server name. All problems are reported together.
func (cfg Config) plan() (plan, string, error) {
	var p plan
	var errs []error
	if cfg.DataDir == "" {
		errs = append(errs, errors.New("tls data directory is required"))
	}
	if cfg.LeafLifetime != 0 && cfg.LeafLifetime < minLeafLifetime {
		errs = append(errs, fmt.Errorf("tls leaf lifetime %s is shorter than the minimum %s", cfg.LeafLifetime, minLeafLifetime))
	}

	siteOf := make(map[string]int) // issued name → 1-based site number
	for i, s := range cfg.Sites {
		n := i + 1
		names, nameErrs := normalizeNames(s.Names)
		for _, err := range nameErrs {
			errs = append(errs, fmt.Errorf("tls site %d: %w", n, err))
		}

		if s.CertFile != "" || s.KeyFile != "" {
			switch {
			case s.CertFile == "":
				errs = append(errs, fmt.Errorf("tls site %d: key file %q without a certificate file", n, s.KeyFile))
			case s.KeyFile == "":
				errs = append(errs, fmt.Errorf("tls site %d: certificate file %q without a key file", n, s.CertFile))
			default:
				p.files = append(p.files, certFiles{cert: s.CertFile, key: s.KeyFile, names: names})
			}
			continue
		}

		if len(s.Names) == 0 {
			errs = append(errs, fmt.Errorf("tls site %d: no names and no certificate files", n))
		}
		if s.Issuer != IssuerAuto && s.Issuer != IssuerLocal {
			errs = append(errs, fmt.Errorf("tls site %d: unknown issuer %s", n, s.Issuer))
			continue
		}
		for _, name := range names {
			if prev, dup := siteOf[name]; dup {
				errs = append(errs, fmt.Errorf("tls site %d: name %q is already in site %d", n, name, prev))
				continue
			}
			siteOf[name] = n
			switch resolveIssuer(s.Issuer, name) {
			case IssuerLocal:
				p.local = append(p.local, name)
			}
		}
	}

	var defaultName string
	if cfg.DefaultServerName != "" {
		var err error
		if defaultName, err = normalizeName(cfg.DefaultServerName); err != nil {
			errs = append(errs, fmt.Errorf("tls default server name: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return plan{}, "", err
	}
	return p, defaultName, nil
}

// resolveIssuer returns the issuer that gets name's certificate in a site
// configured with issuer. Today that is always the local CA; ACME will turn
// IssuerAuto into ACME for names that qualify for a public certificate
// (certmagic.SubjectQualifiesForPublicCert).
func resolveIssuer(issuer Issuer, name string) Issuer {
	switch issuer {
	case IssuerAuto, IssuerLocal:
		return IssuerLocal
	default:
		return issuer
	}
}

// normalizeNames normalizes names, dropping duplicates, and returns the
// errors of the invalid ones.
func normalizeNames(names []string) ([]string, []error) {
	var out []string
	var errs []error
	for _, name := range names {
		n, err := normalizeName(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, errs
}

// normalizeName returns name as certmagic stores and matches it: lower case,
// IP addresses in canonical form without brackets. It rejects names that no
// certificate can carry.
func normalizeName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if len(n) > 1 && n[0] == '[' && n[len(n)-1] == ']' {
		n = n[1 : len(n)-1]
	}
	if addr, err := netip.ParseAddr(n); err == nil {
		if addr.Zone() != "" {
			return "", fmt.Errorf("name %q: ip address with a zone", name)
		}
		return addr.Unmap().String(), nil
	}
	switch {
	case n == "":
		return "", errors.New("empty name")
	case strings.Contains(n, ":"):
		return "", fmt.Errorf("name %q: has a port or is not an ip address", name)
	case strings.IndexFunc(n, notHostnameRune) >= 0:
		r := n[strings.IndexFunc(n, notHostnameRune):]
		return "", fmt.Errorf("name %q: invalid character %q", name, []rune(r)[0])
	case strings.Contains(n, "*") && (!strings.HasPrefix(n, "*.") || strings.Contains(n[1:], "*")):
		return "", fmt.Errorf("name %q: a wildcard must be the whole left-most label", name)
	case !certmagic.SubjectQualifiesForCert(n):
		return "", fmt.Errorf("name %q: not a valid certificate name", name)
	}
	return n, nil
}

// notHostnameRune reports whether r cannot appear in a host name: ASCII
// other than letters, digits, '-', '.', '_' and the wildcard '*'. Non-ASCII
// letters are allowed; certmagic converts such names to punycode.
func notHostnameRune(r rune) bool {
	switch {
	case r >= 0x80:
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.Is(unicode.Mn, r)
	case 'a' <= r && r <= 'z', '0' <= r && r <= '9':
		return false
	default:
		return !strings.ContainsRune("-._*", r)
	}
}
