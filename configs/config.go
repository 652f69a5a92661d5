package configs

import (
	"fmt"
	"strconv"
	"time"
)

// Defaults applied by Parse where the Roamfile says nothing.
const (
	DefaultHTTPSPort             = 443
	DefaultHTTPPort              = 80
	DefaultMaxConnsPerSession    = 8
	DefaultDialTimeout           = 10 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
)

// Position is a place in a Roamfile. File is the path as it was given to
// Load or Parse, so errors read the way the user typed the name.
type Position struct {
	File string
	Line int // 1-based
	Col  int // 1-based, in bytes
}

// String formats the position as "file:line:col".
func (p Position) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

// Config is a parsed and validated Roamfile. A Config exists only after
// validation succeeded: code that receives one does not check it again.
type Config struct {
	// File is the path the configuration was read from, as given.
	File string

	// HTTPSPort is the global https_port option: the port of sites whose
	// address names no port. Default 443.
	HTTPSPort int
	// HTTPPort is the global http_port option: the plain-HTTP port that
	// answers ACME HTTP-01 challenges and redirects everything else to
	// HTTPS. Default 80. It differs from HTTPSPort unless both are 0.
	HTTPPort int
	// DataDir is the global data_dir option (or "storage file_system PATH"):
	// where certificates, ACME accounts and the local CA are stored. Empty
	// means the platform default (tlsmgr.DefaultDataDir).
	DataDir string
	// Email is the global email option: the ACME account email. Empty
	// means none.
	Email string
	// ACMECA is the global acme_ca option: the ACME directory URL, as
	// written; https:// (http:// only on localhost, 127.0.0.1 or ::1).
	// Empty means Let's Encrypt's production directory.
	ACMECA string
	// ACMECARoot is the global acme_ca_root option: a PEM file of roots to
	// trust for the ACME CA's own TLS, as written (Parse does not read it).
	// Empty means the system roots.
	ACMECARoot string
	// OnDemandAsk is the URL of the global "on_demand_tls { ask URL }": it
	// must answer 200 for a name (?domain=NAME) before an on-demand
	// certificate is obtained for it. Empty means on-demand TLS is off.
	OnDemandAsk string
	// DefaultBind is the global default_bind option: the host addresses
	// listeners bind to. Empty means all interfaces.
	DefaultBind []string
	// Admin is the global admin option: the address of the loopback admin
	// endpoint serving /metrics and /debug/pprof/. Empty means off.
	Admin string
	// Log is the global log block.
	Log Log

	// Sites are the site blocks in file order.
	Sites []Site
}

// Log configures the process logger (global "log { level L; format F }").
type Log struct {
	Level  string // one of debug, info, warn, error; default "info"
	Format string // "console" or "json"; default "console"
}

// Site is one site block: the addresses it answers and what it does.
type Site struct {
	Pos       Position  // where the block's first address is
	Addresses []Address // at least one
	TLS       TLS
	// ReverseProxy is the site's reverse_proxy directive. Validation requires
	// exactly one per site for now.
	ReverseProxy *ReverseProxy
}

// Address is one site address such as "example.com", "localhost:8443",
// ":443" or "https://example.com:8443".
type Address struct {
	Pos Position
	// Host is the hostname or IP literal (no brackets), lower-cased. Empty
	// means any host (a catch-all such as ":443"). A leading "*." is a
	// wildcard label.
	Host string
	// Port is the explicit port or, when the address names none, the global
	// HTTPSPort. 0 is allowed and means an ephemeral port chosen at listen
	// time (used by tests).
	Port int
	// Text is the address as written.
	Text string
}

// TLSMode says where a site's certificate comes from.
type TLSMode int

const (
	// TLSAuto picks the issuer from the name: ACME for names a public CA
	// would sign (certmagic.SubjectQualifiesForPublicCert), the local CA for
	// the rest (localhost, IPs, *.local, *.internal, single labels).
	TLSAuto TLSMode = iota
	// TLSInternal forces the local CA ("tls internal").
	TLSInternal
	// TLSFiles uses a certificate and key from files ("tls CERT KEY").
	TLSFiles
	// TLSACME forces an ACME CA ("tls { issuer acme }"), whatever the name.
	TLSACME
)

// String returns the mode as the Roamfile spells it: "auto" (no tls
// directive), "internal", "files" or "acme".
func (m TLSMode) String() string {
	switch m {
	case TLSAuto:
		return "auto"
	case TLSInternal:
		return "internal"
	case TLSFiles:
		return "files"
	case TLSACME:
		return "acme"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// TLS is a site's tls directive:
//
//	tls internal [{ on_demand }]
//	tls CERT_FILE KEY_FILE
//	tls EMAIL
//	tls [EMAIL] {
//		issuer acme|internal
//		email EMAIL
//		ca URL
//		ca_root PEM_FILE
//		on_demand
//	}
//
// Email, CA and CARoot are ACME settings: Parse rejects them with the
// internal issuer. With TLSAuto they apply to the names that get ACME
// certificates.
type TLS struct {
	Pos      Position // the directive; the site's position when there is none
	Mode     TLSMode
	CertFile string // TLSFiles only; as written, relative to the working directory
	KeyFile  string // TLSFiles only
	// Email is the ACME account email for this site; empty means the global
	// email.
	Email string
	// CA is the ACME directory URL for this site; empty means the global
	// acme_ca.
	CA string
	// CARoot is a PEM file of roots to trust for this site's ACME CA's own
	// TLS (a private or test CA); empty means the global acme_ca_root.
	CARoot string
	// OnDemand obtains certificates at the first TLS handshake for a name,
	// after the global on_demand_tls ask endpoint allowed it. Validation
	// requires the ask endpoint.
	OnDemand bool
}

// ReverseProxy is a reverse_proxy directive.
type ReverseProxy struct {
	Pos       Position
	Upstreams []Upstream // at least one
	// MaxConnsPerSession bounds the upstream connections one client session
	// may hold to its backend. Requests beyond it wait. Default 8.
	MaxConnsPerSession int
	// DialTimeout bounds connecting to a backend. Default 10s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a backend's response header
	// after the request was written. 0 means no limit. Default 60s.
	ResponseHeaderTimeout time.Duration
}

// Upstream is one backend of a reverse_proxy.
type Upstream struct {
	Pos Position
	// Addr is the dial address "host:port" (IPv6 in brackets). An upstream
	// written without a port gets port 80; "http://" is accepted and dropped.
	Addr string
	// Text is the upstream as written.
	Text string
}
