package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// Manager owns one certmagic cache (never certmagic.Default), the local CA,
// the certificate files of a Config and its ACME accounts. It hands the
// proxy a TLS config for TCP and one for QUIC that serve the same
// certificates.
//
// Every way of issuing (the local CA; each distinct ACME setup of CA, email,
// CA roots and challenges; each of them again for on-demand names) is one
// certmagic.Config on the one cache. Handshakes are dispatched by SNI to
// the Config of the site that lists the name (exactly, then by wildcard),
// then to an on-demand catch-all site, then to the local CA's, which also
// serves handshakes without SNI. The handshakes of sites with client CAs
// require a client certificate (see Site.ClientCAFiles and
// VerifyClientCert).
//
// Certificates are renewed in the background, in the last
// Config.RenewalWindowRatio of their life or when the CA's renewal
// information says so. A failed renewal never takes a certificate away: the
// one in hand is served until it expires while certmagic retries with
// backoff (1 minute, growing to 6 hours, for up to 30 days); each failure
// is logged and counted.
//
// OCSP stapling is left on (certmagic.OCSPConfig's zero value): certmagic
// staples a fresh response to every certificate that names an OCSP
// responder, and renews a certificate whose staple says revoked. Let's
// Encrypt ended its OCSP service in 2025, so its certificates carry no
// responder and get no staple; other CAs' still may.
//
// Metrics (Config.Registerer), by issuer (the local CA's "local", or the
// ACME CA's host and path) and renewal:
//
//	roamgate_tls_certificates_obtained_total{issuer,renewal}
//	roamgate_tls_certificate_failures_total{issuer,renewal}
//	roamgate_tls_on_demand_decisions_total{result="allowed|denied"}
//	roamgate_storage_errors_total{op}   (Config.Redis: failed storage commands)
//
// With Config.Redis the storage is shared by the instances of a fleet (see
// redisstore): one of them obtains each certificate, under the storage's
// lock, and the others load it. When Redis is down, handshakes are served
// from the cache as before; obtaining and renewing wait for the storage
// (certmagic retries with backoff), and each failed command is logged and
// counted.
//
// Create it with New, load and issue certificates with Start, and release
// the cache's goroutines with Stop. The TLS configs may be handed out before
// Start; handshakes fail until certificates are loaded.
type Manager struct {
	logger   *zap.Logger
	storage  certmagic.Storage
	ca       *LocalCA
	cache    *certmagic.Cache // owned; Stop stops it
	metrics  *metrics
	noCert   *noCertLog  // handshakes that found no certificate
	tcpTLS   *tls.Config // template of TLSConfig
	quicTLS  *tls.Config // template of QUICTLSConfig
	settings Config      // New's Config without Sites (HTTPPort the last Update's): what Update may not change

	// cur is the plan that handshakes, renewals and readiness follow; each
	// reads it once. New stores the first, Update swaps in the next. A
	// stored plan is not changed again, except for its cachedFiles (see
	// plan), which only Start and Update touch.
	cur atomic.Pointer[plan]
	// next is the plan an Update is preparing, until it is switched to or
	// dropped; nil otherwise. Its names may be obtained (see onEvent).
	next atomic.Pointer[plan]

	// onDemandSeen holds the ASCII server names that an on-demand issuance
	// served a certificate for (name → issuanceKey), so that Update can
	// unload those its new plan no longer allows.
	onDemandSeen sync.Map

	// acmeCtx bounds the background ACME work that Start and Update begin
	// (obtaining, and retrying with backoff); Stop cancels it.
	acmeCtx  context.Context
	stopACME context.CancelFunc
	// managing counts the goroutines that wait for the storage before
	// handing a name to certmagic (see manage); Stop waits for them.
	managing sync.WaitGroup

	// updateMu serializes Start and Update, and guards the following.
	updateMu sync.Mutex
	// acmeJobs cancels the background obtaining of each name managed from
	// Start or Update, children of acmeCtx: Update stops those of removed
	// names.
	acmeJobs map[acmeJob]context.CancelFunc

	mu      sync.Mutex // guards the following
	started bool
	loaded  bool // Start loaded the files and the local CA's certificates
	stopped bool
}

// acmeJob is the background management of one name by one issuance.
type acmeJob struct {
	key  issuanceKey
	name string
}

// New validates cfg (see Validate), opens the local CA in cfg.DataDir
// (creating it if absent), registers the metrics and builds the certmagic
// cache and configs. It issues nothing, contacts no CA and reads no
// certificate files; Start does. A nil logger discards logs.
func New(cfg Config, logger *zap.Logger) (*Manager, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	p, err := cfg.plan()
	if err != nil {
		return nil, err
	}
	var ask *asker
	if cfg.OnDemandAsk != "" {
		if ask, err = newAsker(cfg.OnDemandAsk); err != nil {
			return nil, err
		}
	}
	lifetime := cfg.LeafLifetime
	if lifetime == 0 {
		lifetime = DefaultLeafLifetime
	}

	log := logger.Named("tls")
	metrics, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	storage, err := newStorage(cfg, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), localCASetupTimeout)
	defer cancel()
	ca, err := loadOrCreateLocalCA(ctx, storage, lifetime, log)
	if err != nil {
		closeStorage(storage)
		return nil, err
	}
	if s, ok := storage.(fmt.Stringer); ok {
		log.Info("certificate storage", zap.Stringer("storage", s))
	}

	p.ask, p.askURL = ask, cfg.OnDemandAsk
	p.served = servedNames(p)
	settings := cfg
	settings.Sites = nil
	m := &Manager{
		logger:   log,
		storage:  storage,
		ca:       ca,
		metrics:  metrics,
		noCert:   newNoCertLog(log),
		settings: settings,
		acmeJobs: make(map[acmeJob]context.CancelFunc),
	}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   m.configForCert,
		RenewCheckInterval: cfg.RenewCheckInterval, // certmagic's default when 0
		OCSPCheckInterval:  cfg.OCSPCheckInterval,  // ditto
		Logger:             log,
	})
	for _, u := range p.issuances {
		m.newMagic(u, cfg, p)
	}
	m.cur.Store(p)
	m.acmeCtx, m.stopACME = context.WithCancel(context.Background())

	m.tcpTLS = &tls.Config{
		GetCertificate: m.getCertificate,
		// acme-tls/1 must stay: certmagic answers a TLS-ALPN-01 challenge
		// only to a ClientHello that offers it alone and a server that
		// lists it (RFC 8737 §3).
		NextProtos: []string{"h2", "http/1.1", acmeTLS1Protocol},
		MinVersion: tls.VersionTLS12,
	}
	m.quicTLS = &tls.Config{
		GetCertificate: m.getCertificate,
		NextProtos:     []string{"h3"},   // RFC 9114 §3.1; acme-tls/1 is TCP-only
		MinVersion:     tls.VersionTLS13, // RFC 9001 §4.2
	}
	return m, nil
}

// Start loads every certificate/key file pair and loads or issues the
// local-CA certificates, synchronously (milliseconds per name), then starts
// managing the ACME certificates in the background: it never waits for an
// ACME CA. Those already in storage are loaded within milliseconds (in the
// background, as loading staples OCSP, which may need the network); until a
// name's certificate arrives, its handshakes get the default server name's
// certificate, if any, or fail. On-demand names are left to their first
// handshakes. The errors of all file pairs are joined;
// each names its path. ctx bounds the synchronous part only; the background
// work lasts until Stop.
//
// The proxy must open its listeners before calling Start: the plain-HTTP
// one (Config.HTTPPort, serving HTTPChallengeHandler) and the TCP TLS one
// (Config.TLSPort, serving TLSConfig). certmagic takes a busy challenge
// port for one whose owner answers the challenges; were the port free, it
// would bind the port itself for the challenge, and the proxy's own
// listener could fail with "address already in use".
//
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
	m.updateMu.Lock()
	defer m.updateMu.Unlock()
	p := m.cur.Load()

	var errs []error
	for _, f := range p.files {
		pair, err := loadCertFiles(f.cert, f.key)
		if err == nil {
			err = m.cacheFiles(ctx, p, f, pair)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.manageLocal(ctx, p, p.issuances[0].names); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	m.mu.Lock()
	m.loaded = true
	m.mu.Unlock()

	acmeNames, err := m.manageACME(p)
	if err != nil {
		return err
	}

	if d := p.defaultName; d != "" && p.route(d) == p.issuances[0] && !m.hasCertFor(d) {
		// certmagic looks the default name up exactly, not through wildcards.
		m.logger.Warn("no certificate carries the default server name; handshakes without a matching SNI will fail",
			zap.String("default_server_name", d))
	}
	m.logger.Info("certificates ready",
		zap.Int("cert_files", len(p.files)),
		zap.Strings("local_ca_names", p.issuances[0].names),
		zap.Strings("acme_names_pending", acmeNames),
		zap.Bool("on_demand", p.ask != nil))
	return nil
}

// manageACME starts managing, in the background, each ACME name of p that
// has no job yet, and returns those names. Each is obtained and retried
// under a context of its own, a child of acmeCtx (bounded by the manager's
// lifetime, not by the caller's ctx), which Update cancels when the name
// goes. The caller holds updateMu.
func (m *Manager) manageACME(p *plan) ([]string, error) {
	var all []string
	for _, u := range p.issuances {
		if !u.key.acme || u.key.onDemand {
			continue
		}
		var names []string
		for _, name := range u.names {
			job := acmeJob{u.key, name}
			if _, ok := m.acmeJobs[job]; ok {
				continue
			}
			ctx, cancel := context.WithCancel(m.acmeCtx)
			m.manage(ctx, u.magic, issuerKeyOf(u), name)
			m.acmeJobs[job] = cancel
			names = append(names, name)
		}
		if len(names) == 0 {
			continue
		}
		all = append(all, names...)
		m.logger.Info("managing acme certificates in the background",
			zap.String("ca", caOrDefault(u.key.settings.CA)),
			zap.Strings("identifiers", names))
	}
	return all, nil
}

// manage hands name to certmagic (ManageAsync) once the storage answers
// whether it holds the certificate that issuerKey issued for name.
// certmagic gives a name up for good when its first look into the storage
// fails for another reason than "not there" (Redis unreachable, a file
// system error): it logs "initiating certificate management" and never
// obtains the name. So a look is made here first, again every few seconds
// while it fails (logged, rate-limited), until the storage answers or ctx
// ends. (A storage that fails again in the instant between the two looks
// still loses the name.) The obtaining itself waits for the storage's
// lock, and is retried with certmagic's backoff when the CA fails.
func (m *Manager) manage(ctx context.Context, magic *certmagic.Config, issuerKey, name string) {
	key := certmagic.StorageKeys.SiteCert(issuerKey, name)
	m.managing.Go(func() {
		wait := time.Second
		for attempt := 0; ; attempt++ {
			_, err := magic.Storage.Stat(ctx, key)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				if attempt > 0 {
					m.logger.Info("certificate storage answers again: managing the name", zap.String("identifier", name))
				}
				break
			}
			if ctx.Err() != nil {
				return
			}
			if attempt == 0 || wait == maxStorageWait {
				m.logger.Error("certificate storage unavailable: the name's certificate waits for it",
					zap.String("identifier", name), zap.Duration("retry_in", wait), zap.Error(err))
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			wait = min(2*wait, maxStorageWait)
		}
		if err := magic.ManageAsync(ctx, []string{name}); err != nil && ctx.Err() == nil {
			m.logger.Error("managing an acme certificate", zap.String("identifier", name), zap.Error(err))
		}
	})
}

// maxStorageWait bounds the wait between two looks into a failing storage
// (manage).
const maxStorageWait = 30 * time.Second

// TLSConfig returns a new TLS config for the TCP listener: certificates from
// the cache, ALPN h2, http/1.1 and acme-tls/1 (so that ACME's TLS-ALPN-01
// challenge can be answered), TLS 1.2 or later. When a site has client CAs
// (Site.ClientCAFiles), its GetConfigForClient requires a client
// certificate from them in that site's handshakes, on a copy of the
// returned config as it is at the handshake: change it before use, if at
// all, not after (as crypto/tls asks), and not in a clone of it.
func (m *Manager) TLSConfig() *tls.Config { return m.withClientAuth(cloneTLSConfig(m.tcpTLS)) }

// QUICTLSConfig returns a new TLS config for the HTTP/3 listener: the same
// certificates and client authentication as TLSConfig, ALPN h3 only, TLS
// 1.3.
func (m *Manager) QUICTLSConfig() *tls.Config { return m.withClientAuth(cloneTLSConfig(m.quicTLS)) }

// withClientAuth sets c's GetConfigForClient, which requires client
// certificates in the handshakes of sites with client CAs (and keeps c in
// the others), and returns c.
func (m *Manager) withClientAuth(c *tls.Config) *tls.Config {
	// Always set: Update may add client CAs to a manager that had none.
	c.GetConfigForClient = m.getConfigForClient(c)
	return c
}

// cloneTLSConfig returns a copy of c that shares nothing a caller may
// change: tls.Config.Clone copies slices such as NextProtos by reference.
func cloneTLSConfig(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = slices.Clone(c.NextProtos)
	return c
}

// LocalCA returns the manager's local certificate authority.
func (m *Manager) LocalCA() *LocalCA { return m.ca }

// Stop cancels the background ACME work, stops the certificate cache's
// maintenance goroutine (renewals, OCSP refreshes) and waits for it to
// exit. certmagic's workers notice the cancellation at their next step. TLS
// configs already handed out keep serving the cached certificates, which
// are no longer renewed. Stop is idempotent and safe for concurrent use.
func (m *Manager) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	m.stopped = true
	m.stopACME()
	m.managing.Wait()
	m.cache.Stop()
	if ask := m.cur.Load().ask; ask != nil {
		ask.close()
	}
	closeStorage(m.storage)
}

// closeStorage closes a storage that holds connections (Redis), releasing
// its locks. certmagic's workers that notice Stop late find it closed.
func closeStorage(s certmagic.Storage) {
	if c, ok := s.(io.Closer); ok {
		_ = c.Close()
	}
}

// plan returns the current plan.
func (m *Manager) plan() *plan { return m.cur.Load() }

// getCertificate is the TLS configs' GetCertificate: the Config of the
// server name's issuance answers, so that on-demand decisions and
// TLS-ALPN-01 challenges are those of the right setup. A handshake that
// finds no certificate is logged (see noCertLog); on-demand issuances log
// their own denials.
func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	p := m.plan()
	u := p.route(hello.ServerName)
	cert, err := u.magic.GetCertificate(hello)
	switch {
	case err != nil && !u.key.onDemand:
		m.noCert.note(hello, p.served, p.lists(hello.ServerName), err)
	case err == nil && u.key.onDemand && hello.ServerName != "":
		m.noteOnDemand(hello.ServerName, u.key)
	}
	return cert, err
}

// configForCert is the cache's GetConfigForCert: the Config that renews a
// certificate is the one its name is routed to.
func (m *Manager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	if len(c.Names) == 0 {
		return m.plan().issuances[0].magic, nil
	}
	return m.issuanceFor(c.Names[0]).magic, nil
}

// issuanceFor returns the issuance of the current plan that serves a
// server name (see plan.route).
func (m *Manager) issuanceFor(serverName string) *issuance { return m.plan().route(serverName) }

// route returns the issuance that serves a server name: the site that
// lists it, else the site with a matching wildcard (one label, RFC 6125
// §6.4.3), else the on-demand catch-all, else the local CA's.
func (p *plan) route(serverName string) *issuance {
	name := strings.ToLower(strings.TrimSuffix(serverName, "."))
	if name == "" {
		return p.issuances[0]
	}
	if u := p.routes[name]; u != nil {
		return u
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if u := p.routes["*"+name[i:]]; u != nil {
			return u
		}
	}
	if ca := p.catchAll; ca[0] != nil {
		if ca[0] == ca[1] || !qualifiesForACME(name) {
			return ca[0]
		}
		return ca[1]
	}
	return p.issuances[0]
}

// cacheFiles loads one certificate/key file pair, read and checked by
// loadCertFiles, into the cache, and adds its cache hash to p.cachedFiles.
func (m *Manager) cacheFiles(ctx context.Context, p *plan, f certFiles, pair certPair) error {
	// Read and check once, then hand certmagic the same bytes (rather than
	// CacheUnmanagedCertificatePEMFile, which reads the files again and
	// reports parse errors without a path).
	hash, err := p.issuances[0].magic.CacheUnmanagedCertificatePEMBytes(ctx, pair.certPEM, pair.keyPEM, nil)
	if err != nil {
		return fmt.Errorf("tls certificate %q: %w", f.cert, err)
	}
	p.cachedFiles = append(p.cachedFiles, hash)
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

// manageLocal loads or issues the local-CA certificates of names with p's
// local-CA issuance.
func (m *Manager) manageLocal(ctx context.Context, p *plan, names []string) error {
	if len(names) == 0 {
		return nil
	}
	for _, name := range names {
		m.dropForeignLeaf(ctx, name)
	}
	if err := p.issuances[0].magic.ManageSync(ctx, names); err != nil {
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
