package tlsmgr

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/idna"
)

// Issuer selects where the certificates of a site's names come from.
type Issuer int

const (
	// IssuerAuto chooses per name, as Caddy's automatic HTTPS does: ACME
	// for names a public CA would sign, the local CA for the rest:
	// localhost and *.localhost, IP addresses, *.local, *.internal,
	// *.home.arpa and single-label names (certmagic's
	// SubjectQualifiesForPublicCert, with IP addresses and single labels
	// kept local).
	IssuerAuto Issuer = iota
	// IssuerLocal issues every name from the local CA.
	IssuerLocal
	// IssuerACME gets every name's certificate from the site's ACME CA,
	// whatever the name (a private CA may sign internal names).
	IssuerACME
)

// String returns the issuer's Roamfile spelling.
func (i Issuer) String() string {
	switch i {
	case IssuerAuto:
		return "auto"
	case IssuerLocal:
		return "local"
	case IssuerACME:
		return "acme"
	default:
		return fmt.Sprintf("Issuer(%d)", int(i))
	}
}

// Config configures a Manager.
type Config struct {
	// DataDir is the root of certmagic's FileStorage: issued certificates
	// (certificates/), ACME accounts (acme/), the local CA (local_ca/) and
	// storage locks (locks/). Processes that share it share certificates,
	// accounts and the CA, and one of them solves each ACME challenge.
	// Required unless Redis is set; see DefaultDataDir.
	DataDir string

	// Redis, when set, keeps all of that in a Redis server instead, for a
	// fleet without a shared file system (see NewStorage); DataDir is then
	// unused here. With Redis down, certificates in memory keep serving;
	// issuance and renewal wait for the storage and retry.
	Redis *Redis

	// Sites lists what to serve. Each name may appear in one site only.
	Sites []Site

	// DefaultServerName is the name whose certificate answers handshakes
	// with no SNI (when no certificate matches the local IP address either)
	// or with an SNI that matches nothing. Empty: such handshakes fail.
	DefaultServerName string

	// LeafLifetime is the validity of local-CA leaf certificates; at least
	// one hour. Zero means DefaultLeafLifetime (7 days).
	LeafLifetime time.Duration

	// ACME holds the defaults of the sites whose certificates come from an
	// ACME CA; a site's own Site.ACME overrides them.
	ACME ACME

	// OnDemandAsk is the URL that vets on-demand certificates: before one
	// is obtained or renewed for a name, GET OnDemandAsk with
	// "domain=NAME" added to its query must answer 200 within 5 seconds.
	// Any other status, a redirect or an error denies it. Required when a
	// site has OnDemand; empty otherwise.
	OnDemandAsk string

	// HTTPPort is the port of roamgate's plain-HTTP listener, which answers
	// ACME HTTP-01 challenges (see HTTPChallengeHandler); TLSPort is the
	// port of its TCP TLS listener (TLSConfig), which answers TLS-ALPN-01
	// challenges. Zero means 80 and 443, the ports a CA validates on;
	// others work only behind a port forward from 80 and 443, or in tests.
	HTTPPort, TLSPort int

	// ListenHost is the host roamgate's HTTP and TLS listeners bind; empty
	// means all interfaces. certmagic binds HTTPPort or TLSPort on
	// ListenHost itself only while the port is free, to answer a
	// challenge; a busy port it takes for one whose owner answers.
	ListenHost string

	// Registerer receives the certificate metrics (see Manager); nil
	// leaves them unregistered. Managers that share a Registerer, as the
	// old and the new one of a reload do, share the metrics.
	Registerer prometheus.Registerer

	// RenewCheckInterval is how often cached certificates are checked for
	// renewal, OCSPCheckInterval how often their OCSP staples are
	// refreshed. Zero means certmagic's defaults: 10 minutes and 1 hour.
	RenewCheckInterval, OCSPCheckInterval time.Duration

	// RenewalWindowRatio is the part of a certificate's lifetime, at its
	// end, in which it is renewed: between 0 and 1. Zero means certmagic's
	// default, 1/3. An ACME CA's renewal information (ARI, RFC 9773) may
	// ask for an earlier renewal, which certmagic follows.
	RenewalWindowRatio float64
}

// ACME says how certificates are obtained from an ACME CA (RFC 8555).
// roamgate answers the HTTP-01 and TLS-ALPN-01 challenges (RFC 8555 §8.3,
// RFC 8737), not DNS-01, so it cannot obtain wildcard certificates. It
// agrees to the CA's terms of service on the operator's behalf, as Caddy
// does.
type ACME struct {
	// CA is the ACME directory URL. Empty means Let's Encrypt's production
	// directory (certmagic.LetsEncryptProductionCA); certmagic then
	// retries failures against Let's Encrypt's staging directory first.
	// https:// is required, except on internal hosts such as localhost.
	CA string

	// Email is the ACME account's contact address. Empty means certmagic
	// picks one: an address another ACME setup of this process used, else
	// that of an account stored for the CA, else none.
	Email string

	// CARootFile names a PEM file of root certificates to trust for the
	// CA's own TLS (a private or test CA). Empty means the system roots.
	// New and Validate read it; their errors name the path.
	CARootFile string

	// DisableHTTPChallenge and DisableTLSALPNChallenge turn off the HTTP-01
	// and TLS-ALPN-01 challenges. At least one must stay on.
	DisableHTTPChallenge, DisableTLSALPNChallenge bool
}

// override returns a with the settings of site: its non-empty strings
// replace a's, and its true switches are added to a's.
func (a ACME) override(site ACME) ACME {
	if site.CA != "" {
		a.CA = site.CA
	}
	if site.Email != "" {
		a.Email = site.Email
	}
	if site.CARootFile != "" {
		a.CARootFile = site.CARootFile
	}
	a.DisableHTTPChallenge = a.DisableHTTPChallenge || site.DisableHTTPChallenge
	a.DisableTLSALPNChallenge = a.DisableTLSALPNChallenge || site.DisableTLSALPNChallenge
	return a
}

// Site is one group of names with one certificate source.
type Site struct {
	// Source says where the site was configured, for error messages (a
	// Roamfile position such as "Roamfile:12:1"); empty means "tls site N",
	// N counting from 1.
	Source string

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

	// ACME overrides Config.ACME for this site's ACME names: each
	// non-empty string replaces the default, each true switch is added.
	ACME ACME

	// OnDemand defers the certificates of Names to the first TLS handshake
	// that asks for one, once Config.OnDemandAsk has allowed the name;
	// they are renewed at handshakes too. A wildcard name then stands for
	// the names it matches, each of which gets a certificate of its own
	// (a wildcard certificate would need the DNS challenge). Requires
	// Config.OnDemandAsk.
	OnDemand bool

	// CatchAll extends the site to any server name that no other site
	// lists, and to handshakes without one (a catch-all site such as
	// ":443"). With OnDemand, whatever name the ask endpoint allows gets a
	// certificate, with IssuerAuto from the ACME CA if the name qualifies
	// for one and from the local CA otherwise. With ClientCAFiles, those
	// handshakes must present a client certificate (see ClientCAFiles). A
	// catch-all needs one of the two; only one site may be a catch-all.
	CatchAll bool

	// ClientCAFiles name PEM files of CA certificates: when set, every TLS
	// handshake for the site (its Names; with CatchAll, any name no other
	// site lists, and none) must present a client certificate that chains
	// to one of them, for client authentication (mutual TLS). Both TLS
	// configs ask for it; handshakes of other sites do not. A server name
	// is matched as certificates are: exactly, then by a wildcard name,
	// then by the catch-all; a handshake without one by the local IP
	// address, then DefaultServerName, then the catch-all. A TLS-ALPN-01
	// challenge (a ClientHello with SNI that offers ALPN acme-tls/1 only)
	// is exempt: the ACME CA has no client certificate. New and Validate
	// read each file once; their errors name the path. Sites that list a
	// name twice must agree on the files.
	ClientCAFiles []string
}

// Validate reports whether New would accept cfg, with every problem joined
// in one error. It reads the ACME CA root files and the client CA files,
// and nothing else: no storage, no local CA, no certificate files (see
// CheckCertFiles).
func Validate(cfg Config) error {
	_, err := cfg.plan()
	return err
}

// plan is what a Manager does, derived once from a validated Config.
type plan struct {
	files []certFiles // served as they are

	// issuances are the ways certificates are issued, one certmagic.Config
	// each. The first is the local CA's for names managed from Start; it
	// also serves handshakes that no route claims.
	issuances []*issuance

	// routes maps each site name, in ASCII ("*.example.com" for a wildcard),
	// to its issuance.
	routes map[string]*issuance

	// catchAll is the on-demand catch-all site's issuance for names that do
	// not qualify for ACME ([0]) and for those that do ([1]); nil without
	// such a site.
	catchAll [2]*issuance

	defaultName string // normalized Config.DefaultServerName

	// clientAuth maps the names of every site, in ASCII as routes does, to
	// the client CAs its handshakes require; nil for a site without
	// ClientCAFiles, so that its exact names are not taken for a
	// wildcard's. clientAuthAny is the catch-all site's, for the other
	// names; nil without one or when it has none.
	clientAuth    map[string]*clientCAs
	clientAuthAny *clientCAs
	// clientCAs holds one pool per distinct set of client CA files, by
	// clientCAsKey.
	clientCAs map[string]*clientCAs

	// Set by New and Update, not by Config.plan:
	ask         *asker   // vets on-demand names; nil without Config.OnDemandAsk
	askURL      string   // Config.OnDemandAsk
	served      []string // servedNames, for the no-certificate log
	cachedFiles []string // cache hashes of the files' certificates; Start and Update add them, under Manager.updateMu
}

// issuanceByKey returns p's issuance with key, or nil.
func (p *plan) issuanceByKey(key issuanceKey) *issuance {
	for _, u := range p.issuances {
		if u.key == key {
			return u
		}
	}
	return nil
}

// issuance is one way of issuing: one issuer (the local CA, or one ACME
// setup) for names managed from Start, or on demand.
type issuance struct {
	key   issuanceKey
	roots *x509.CertPool // ACME: the CA's TLS roots (CARootFile); nil means the system's

	names []string // normalized names managed from Start (not on demand)

	// On demand: the ASCII names and wildcard patterns that certificates
	// may be obtained for, or any name for a catch-all.
	exact, wild map[string]bool
	anyName     bool

	magic *certmagic.Config     // set by New
	acme  *certmagic.ACMEIssuer // set by New for ACME issuances
}

// issuanceKey identifies an issuance: certmagic.Configs differ exactly in
// these settings.
type issuanceKey struct {
	acme     bool
	settings ACME // resolved Config.ACME and Site.ACME; zero for the local CA
	onDemand bool
}

// certFiles is a certificate/key file pair from a Site.
type certFiles struct {
	cert, key string
	names     []string // normalized; informative
}

// issuanceFor returns the issuance with key, adding it to p if new. A new
// ACME issuance gets its CA roots from roots, keyed by path.
func (p *plan) issuanceFor(key issuanceKey, roots map[string]*x509.CertPool) *issuance {
	for _, u := range p.issuances {
		if u.key == key {
			return u
		}
	}
	u := &issuance{key: key, exact: map[string]bool{}, wild: map[string]bool{}}
	if key.acme && key.settings.CARootFile != "" {
		u.roots = roots[key.settings.CARootFile]
	}
	p.issuances = append(p.issuances, u)
	return u
}

// plan validates cfg and returns what a Manager has to do. All problems are
// reported together.
func (cfg Config) plan() (*plan, error) {
	p := &plan{
		routes:     make(map[string]*issuance),
		clientAuth: make(map[string]*clientCAs),
		clientCAs:  make(map[string]*clientCAs),
	}
	p.issuanceFor(issuanceKey{}, nil) // the local CA's, first
	var errs []error
	errs = append(errs, cfg.checkGlobals()...)

	roots := make(map[string]*x509.CertPool)        // CA root file → its pool
	caCerts := make(map[string][]*x509.Certificate) // client CA file → its certificates; nil after an error
	clientAuthSite := make(map[string]int)          // ASCII name → 1-based site whose client CAs it has
	checked := make(map[ACME]bool)                  // ACME settings checked already
	siteOf := make(map[string]int)                  // issued name → 1-based site number
	catchAllSite := 0
	labels := make([]string, len(cfg.Sites)+1) // 1-based: site n's name in errors
	for i, s := range cfg.Sites {
		labels[i+1] = s.Source
		if labels[i+1] == "" {
			labels[i+1] = fmt.Sprintf("tls site %d", i+1)
		}
	}
	for i, s := range cfg.Sites {
		n := i + 1
		label := labels[n]
		names, nameErrs := normalizeNames(s.Names)
		for _, err := range nameErrs {
			errs = append(errs, fmt.Errorf("%s: %w", label, err))
		}

		cas, caErrs := p.loadClientCAs(s.ClientCAFiles, label, caCerts)
		errs = append(errs, caErrs...)
		for _, name := range names {
			ascii := asciiName(name)
			prev, dup := clientAuthSite[ascii]
			switch {
			case !dup:
				clientAuthSite[ascii] = n
				p.clientAuth[ascii] = cas
			case p.clientAuth[ascii] != cas:
				errs = append(errs, fmt.Errorf("%s: name %q: client CA files differ from those of %s, which lists it too (one TLS handshake serves both)", label, name, labels[prev]))
			}
		}
		switch {
		case !s.CatchAll:
		case !s.OnDemand && len(s.ClientCAFiles) == 0:
			errs = append(errs, fmt.Errorf("%s: a catch-all site needs OnDemand (certificates for any name) or ClientCAFiles (client certificates for any name)", label))
		case catchAllSite != 0:
			errs = append(errs, fmt.Errorf("%s: a second catch-all site (%s is one)", label, labels[catchAllSite]))
		default:
			catchAllSite = n
			p.clientAuthAny = cas
		}

		if s.CertFile != "" || s.KeyFile != "" {
			switch {
			case s.CertFile == "":
				errs = append(errs, fmt.Errorf("%s: key file %q without a certificate file", label, s.KeyFile))
			case s.KeyFile == "":
				errs = append(errs, fmt.Errorf("%s: certificate file %q without a key file", label, s.CertFile))
			default:
				p.files = append(p.files, certFiles{cert: s.CertFile, key: s.KeyFile, names: names})
			}
			if s.OnDemand {
				errs = append(errs, fmt.Errorf("%s: certificate files leave nothing to obtain on demand", label))
			}
			continue
		}

		if len(s.Names) == 0 && !s.CatchAll {
			errs = append(errs, fmt.Errorf("%s: no names and no certificate files", label))
		}
		if s.OnDemand && cfg.OnDemandAsk == "" {
			errs = append(errs, fmt.Errorf("%s: on_demand needs an ask endpoint (on_demand_tls { ask URL }) that vets each name", label))
		}
		if s.Issuer != IssuerAuto && s.Issuer != IssuerLocal && s.Issuer != IssuerACME {
			errs = append(errs, fmt.Errorf("%s: unknown issuer %s", label, s.Issuer))
			continue
		}

		settings := cfg.ACME.override(s.ACME)
		keyFor := func(iss Issuer) issuanceKey {
			k := issuanceKey{acme: iss == IssuerACME, onDemand: s.OnDemand}
			if k.acme {
				k.settings = settings
				if !checked[settings] {
					checked[settings] = true
					errs = append(errs, checkACME(settings, roots)...)
				}
			}
			return k
		}
		for _, name := range names {
			if prev, dup := siteOf[name]; dup {
				errs = append(errs, fmt.Errorf("%s: name %q is already in %s", label, name, labels[prev]))
				continue
			}
			siteOf[name] = n
			iss := resolveIssuer(s.Issuer, name)
			wildcard := strings.HasPrefix(name, "*.")
			if iss == IssuerACME && wildcard && !s.OnDemand {
				errs = append(errs, fmt.Errorf("%s: name %q: wildcard certificates need the DNS challenge, which roamgate does not support; use tls { on_demand } or tls CERT KEY", label, name))
				continue
			}
			u := p.issuanceFor(keyFor(iss), roots)
			ascii := asciiName(name)
			switch {
			case !s.OnDemand:
				u.names = append(u.names, name)
			case wildcard:
				u.wild[ascii] = true
			default:
				u.exact[ascii] = true
			}
			p.routes[ascii] = u
		}
		if s.CatchAll && s.OnDemand && catchAllSite == n {
			for public := range 2 {
				iss := s.Issuer
				if iss == IssuerAuto {
					iss = []Issuer{IssuerLocal, IssuerACME}[public]
				}
				u := p.issuanceFor(keyFor(iss), roots)
				u.anyName = true
				p.catchAll[public] = u
			}
		}
	}
	// Certificate files are served for their own names; a name no issued
	// site has routes to the local CA's issuance, which serves the cache.
	for _, f := range p.files {
		for _, name := range f.names {
			if ascii := asciiName(name); p.routes[ascii] == nil {
				p.routes[ascii] = p.issuances[0]
			}
		}
	}

	if cfg.DefaultServerName != "" {
		var err error
		if p.defaultName, err = normalizeName(cfg.DefaultServerName); err != nil {
			errs = append(errs, fmt.Errorf("tls default server name: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// checkGlobals checks the settings of cfg that are not per site.
func (cfg Config) checkGlobals() []error {
	var errs []error
	if cfg.DataDir == "" && cfg.Redis == nil {
		errs = append(errs, errors.New("tls data directory is required"))
	}
	errs = append(errs, cfg.Redis.check()...)
	if cfg.LeafLifetime != 0 && cfg.LeafLifetime < minLeafLifetime {
		errs = append(errs, fmt.Errorf("tls leaf lifetime %s is shorter than the minimum %s", cfg.LeafLifetime, minLeafLifetime))
	}
	for _, p := range []struct {
		name string
		port int
	}{{"http", cfg.HTTPPort}, {"tls", cfg.TLSPort}} {
		if p.port < 0 || p.port > 65535 {
			errs = append(errs, fmt.Errorf("tls %s challenge port %d is out of range (0-65535)", p.name, p.port))
		}
	}
	if orDefault(cfg.HTTPPort, certmagic.HTTPChallengePort) == orDefault(cfg.TLSPort, certmagic.TLSALPNChallengePort) {
		errs = append(errs, fmt.Errorf("tls http and tls challenge ports must differ (both are %d)", orDefault(cfg.HTTPPort, certmagic.HTTPChallengePort)))
	}
	if r := cfg.RenewalWindowRatio; r < 0 || r >= 1 || math.IsNaN(r) {
		errs = append(errs, fmt.Errorf("tls renewal window ratio %g is out of range (0 for the default, or between 0 and 1)", r))
	}
	if cfg.RenewCheckInterval < 0 || cfg.OCSPCheckInterval < 0 {
		errs = append(errs, errors.New("tls renew and ocsp check intervals must not be negative"))
	}
	if cfg.OnDemandAsk != "" {
		u, err := url.Parse(cfg.OnDemandAsk)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("tls on-demand ask URL %q: want an absolute http:// or https:// URL", cfg.OnDemandAsk))
		}
	}
	return errs
}

// orDefault returns port, or def if port is 0.
func orDefault(port, def int) int {
	if port == 0 {
		return def
	}
	return port
}

// checkACME checks one resolved ACME setup and loads its CA root file into
// roots, unless an earlier setup loaded or reported that file.
func checkACME(a ACME, roots map[string]*x509.CertPool) []error {
	var errs []error
	if a.CA != "" {
		u, err := url.Parse(a.CA)
		switch {
		case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
			errs = append(errs, fmt.Errorf("tls acme ca %q: want an absolute https:// directory URL", a.CA))
		case u.Scheme == "http" && !certmagic.SubjectIsInternal(u.Hostname()):
			// certmagic refuses it too, but only once it tries to issue.
			errs = append(errs, fmt.Errorf("tls acme ca %q: http:// is allowed only for internal hosts such as localhost (want https://)", a.CA))
		}
	}
	if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsFunc(a.Email, unicode.IsSpace)) {
		errs = append(errs, fmt.Errorf("tls acme email %q: not an email address", a.Email))
	}
	if a.DisableHTTPChallenge && a.DisableTLSALPNChallenge {
		errs = append(errs, fmt.Errorf("tls acme ca %q: both the HTTP-01 and the TLS-ALPN-01 challenge are disabled, which leaves none", caOrDefault(a.CA)))
	}
	if f := a.CARootFile; f != "" {
		if _, done := roots[f]; !done {
			pool, err := loadRoots(f)
			roots[f] = pool // nil after an error, which is reported once
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// caOrDefault returns the ACME directory URL that certmagic uses for ca.
func caOrDefault(ca string) string {
	if ca == "" {
		return certmagic.LetsEncryptProductionCA
	}
	return ca
}

// loadRoots reads a PEM file of CA root certificates.
func loadRoots(name string) (*x509.CertPool, error) {
	certs, err := readCertificates(name)
	if err != nil {
		return nil, fmt.Errorf("tls acme ca root %q: %w", name, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("tls acme ca root %q: no PEM certificate", name)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// resolveIssuer returns the issuer that gets name's certificate in a site
// configured with issuer.
func resolveIssuer(issuer Issuer, name string) Issuer {
	if issuer != IssuerAuto {
		return issuer
	}
	if qualifiesForACME(name) {
		return IssuerACME
	}
	return IssuerLocal
}

// qualifiesForACME reports whether IssuerAuto gets name's certificate from
// ACME: a name certmagic deems fit for a public certificate, other than an
// IP address or a single label (which no public CA signs; certmagic lets
// them through).
func qualifiesForACME(name string) bool {
	if certmagic.SubjectIsIP(name) || !strings.Contains(strings.TrimPrefix(name, "*."), ".") {
		return false
	}
	return certmagic.SubjectQualifiesForPublicCert(name)
}

// asciiName returns a normalized name as it appears in SNI and in issued
// certificates: internationalized labels in punycode (RFC 5891).
func asciiName(name string) string {
	prefix, rest := "", name
	if strings.HasPrefix(rest, "*.") {
		prefix, rest = "*.", rest[2:]
	}
	if a, err := idna.Lookup.ToASCII(rest); err == nil {
		rest = a
	}
	return prefix + rest
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
