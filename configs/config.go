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
	DefaultLBTryDuration         = 0
	DefaultLBTryInterval         = 250 * time.Millisecond
	DefaultHealthInterval        = 30 * time.Second
	DefaultHealthTimeout         = 5 * time.Second
	DefaultMaxHeaderBytes        = 32 << 10 // nginx's default (4 buffers of 8 KiB)
	DefaultMaxHeaderFieldBytes   = 8 << 10  // nginx's default (one buffer)
	DefaultLBCookie              = "roamgate_lb"
	// Above DefaultHandshakeRate new QUIC connections a second (all
	// clients), clients prove their address with a Retry first: half of
	// what one core completes (BenchmarkHandshake: ~1 ms a handshake,
	// client and server together; a Retry adds ~60 µs on loopback).
	DefaultHandshakeRate = 1000
	// DefaultHandshakeRatePerIP new QUIC connections a second from one
	// client address (an IPv6 /64), with bursts of twice as many: generous
	// for a carrier-grade NAT in front of many phones, small next to a
	// flood.
	DefaultHandshakeRatePerIP = 200
	// DefaultUpgradeGrace bounds how long an old process serves its
	// connections after a binary upgrade: long enough for a mobile app's
	// session (a video call, a long download, a chat kept open), short
	// enough that a deploy ends within the hour.
	DefaultUpgradeGrace = time.Hour
	// DefaultUpgradeTimeout bounds how long a binary upgrade's new process
	// may take to serve before it is given up.
	DefaultUpgradeTimeout = time.Minute
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
	// where certificates, ACME accounts and the local CA are stored, unless
	// Redis is set, and the control socket and the lb_policy cookie key.
	// Empty means the platform default (tlsmgr.DefaultDataDir).
	DataDir string
	// Redis is the global "storage redis { ... }" option: certificates,
	// ACME accounts and the local CA in Redis, shared by a fleet; nil means
	// in DataDir.
	Redis *RedisStorage
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
	// ZeroRTT is the global zero_rtt option: accept 0-RTT (early data) from
	// resumed HTTP/3 clients. Early requests with unsafe methods get 425
	// Too Early (RFC 8470). Default true; "zero_rtt off" turns it off.
	ZeroRTT bool
	// MaxHeaderBytes is the global max_header_bytes option: the default of
	// every site's Limits.HeaderBytes. Default DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// MaxHeaderFieldBytes is the global max_header_field_bytes option: the
	// default of every site's Limits.FieldBytes. Default
	// DefaultMaxHeaderFieldBytes.
	MaxHeaderFieldBytes int
	// HandshakeRate is the global handshake_rate option: new QUIC
	// connections a second, over all clients, above which a client that
	// has not proven its address gets a Retry first (RFC 9000 §8.1.2): a
	// flood from spoofed addresses then costs the server no handshake
	// state. 0 means every new connection proves its address first.
	// Default DefaultHandshakeRate.
	HandshakeRate int
	// HandshakeRatePerIP is the global handshake_rate_per_ip option: new
	// QUIC connections a second from one client address (an IPv6 /64),
	// bursts of twice as many. Over it, an attempt from an address not yet
	// proven gets a Retry; one from a proven address is refused
	// (CONNECTION_REFUSED). 0 turns the limit off. Default
	// DefaultHandshakeRatePerIP.
	HandshakeRatePerIP int
	// UpgradeGrace is the global upgrade_grace option: how long, after a
	// binary upgrade handed its sockets to the new process, the old one
	// goes on serving the connections it has before it tells the rest to
	// go away (GOAWAY) and exits. Default DefaultUpgradeGrace.
	UpgradeGrace time.Duration
	// UpgradeTimeout is the global upgrade_timeout option: how long a new
	// process may take to serve after SIGUSR2 or roamgate upgrade before
	// the old one stops it and serves on. Default DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// UpgradeSteering is the global upgrade_steering option, how packets
	// of the old process's QUIC connections reach it during an upgrade:
	// "auto" (default: "bpf" where this process may load BPF programs,
	// else "forward"), "bpf" or "forward" (see package handoff). It is
	// read when roamgate starts; upgrades keep the mode the first
	// process chose.
	UpgradeSteering string
	// OnDemandAsk is the URL of the global "on_demand_tls { ask URL }": it
	// must answer 200 for a name (?domain=NAME) before an on-demand
	// certificate is obtained for it. Empty means on-demand TLS is off.
	OnDemandAsk string
	// DefaultBind is the global default_bind option: the host addresses
	// listeners bind to. Empty means all interfaces.
	DefaultBind []string
	// Admin is the global admin option: the address of the admin endpoint
	// serving /metrics, /healthz and /readyz, and /debug/pprof/ on
	// loopback. Empty means off.
	Admin string
	// Log is the global log block.
	Log Log
	// QUICLB is the global quic_lb block: routable connection IDs for a
	// load balancer in front of several instances. nil means unroutable
	// connection IDs (config rotation 7), for an instance on its own.
	QUICLB *QUICLB
	// SharedKeys is the global shared_keys option; nil: every key is this
	// process's own.
	SharedKeys *SharedKeys

	// Sites are the site blocks in file order.
	Sites []Site
}

// Log configures the process logger and the access log (global options):
//
//	log {
//		output stderr|stdout|discard|file PATH
//		level debug|info|warn|error
//		format console|json
//	}
//	log access off
//	log access {
//		output stderr|stdout|discard|file PATH
//		format console|json
//	}
type Log struct {
	Level  string    // one of debug, info, warn, error; default "info"
	Format string    // "console" or "json"; default "console"
	Output LogOutput // Kind "" means stderr
	// Access is the access log: one line per request, at info. By default
	// its lines go with the process log's (its output and format, logger
	// "access"), whatever the process log's level.
	Access AccessLog
}

// AccessLog is "log access off" or "log access { output O; format F }".
type AccessLog struct {
	Off    bool      // "log access off": no access-log lines
	Output LogOutput // Kind "" means the process log's output
	Format string    // "" means the process log's format
}

// LogOutput is where a log's lines go: the "output" subdirective.
type LogOutput struct {
	Pos Position // of the output subdirective; zero when it is not written
	// Kind is "stderr", "stdout", "discard" (nowhere) or "file"; "" when
	// not written.
	Kind string
	// Path is the file of Kind "file", as written (relative to the working
	// directory). Parse does not open it; roamgate run opens it at start,
	// appending, and creates it (mode 0600) if it does not exist.
	Path string
}

// Site is one site block: the addresses it answers and what it does.
type Site struct {
	Pos       Position  // where the block's first address is
	Addresses []Address // at least one
	TLS       TLS
	// Routes are the site's handle and handle_path blocks in file order,
	// then, when the site has a handler outside any block, one last route
	// without a path pattern for it: last even when the handler is written
	// before the blocks, so it is the fallback. The first route whose
	// pattern matches a request handles it; a request no route matches gets
	// 404. Validation requires at least one route or a tunnel, and refuses
	// a route that an earlier one leaves no request to (after
	// "handle /api/*", say, "handle /api/v2/*").
	Routes []Route
	// Headers are the site-level header directives: they apply to every
	// response of the site, after the route's own.
	Headers []HeaderOp
	// Limits bound the site's request heads: the site's max_header_bytes
	// and max_header_field_bytes, else the global ones.
	Limits Limits
	// Tunnel is the site's tunnel directive: HTTP/3 CONNECT requests
	// (RFC 9114 §4.4) to the site are spliced to this one backend, whatever
	// authority they name. A site needs routes, a tunnel, or both.
	Tunnel *Tunnel
}

// Tunnel is "tunnel HOST:PORT [{ token TOKEN...; dial_timeout D }]": raw
// TCP to one configured backend (an SSH server, a database) for clients
// that authenticate with a client certificate (the site's tls client_auth)
// or a bearer token. Validation refuses a tunnel with neither.
type Tunnel struct {
	Pos     Position
	Backend string // "host:port", normalized like Upstream.Addr (a port is required)
	// Tokens are accepted bearer tokens (Authorization: Bearer TOKEN),
	// compared in constant time; write them as {$ENV} to keep them out of
	// the file. Empty: client certificates only.
	Tokens      []string
	DialTimeout time.Duration // default DefaultDialTimeout
}

// Route is one handle or handle_path block (or the site's directives
// outside any block): a path pattern and exactly one handler.
type Route struct {
	Pos Position // the handle/handle_path token, or the handler's for the implicit route
	// Path is the pattern: "" matches every path ("handle" without a
	// pattern, or "handle *"); "/api/*" or "/api*" a prefix ("/api/*" also
	// matches "/api"); "*.php" a suffix; "*/admin/*" a substring; anything
	// else, starting with "/", the exact path. A "*" appears only at the
	// start or the end. Matching is on the cleaned, decoded path, ignoring
	// case; Parse refuses exact and prefix patterns that cleaning would
	// change (such as "/a/../b"), which could never match.
	Path string
	// StripPrefix is the prefix handle_path removes before the handler sees
	// the path: the pattern up to its "*", without a trailing "/" ("/api"
	// for "/api/*" and "/api*"); never "" for handle_path, always "" for
	// handle and the site-level route.
	StripPrefix string
	// Headers are the header directives of a handle block, applied to its
	// responses; always empty for the site-level route (Site.Headers has
	// those).
	Headers []HeaderOp

	// Exactly one of these is set.
	ReverseProxy *ReverseProxy
	Respond      *Respond
	Redir        *Redir
}

// HeaderOp is one header, header_up or header_down directive:
//
//	header NAME VALUE    set (replace)
//	header +NAME VALUE   add a value
//	header -NAME         delete
//
// Values may hold the placeholders {host} (the request's host, without
// its port), {hostport} (the host with the port the client named, as it
// named it: "example.com:8443", or "example.com" when it named none),
// {uri} (path and query), {path}, {query}, {scheme} and, in header_up,
// {upstream_hostport} (the backend address); Parse refuses any other
// "{name}" (letters, digits, '_', '.', '-', '>'), and other braces are
// text. Names are RFC 9110 tokens. Parse refuses the hop-by-hop and
// framing fields (Connection, Content-Length, Keep-Alive,
// Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade) everywhere,
// and Host except "header_up Host VALUE". Values hold no control
// characters other than tab.
type HeaderOp struct {
	Pos    Position
	Name   string // canonical form (textproto.CanonicalMIMEHeaderKey)
	Value  string // empty for delete
	Add    bool   // "+NAME"
	Delete bool   // "-NAME"
}

// Respond is "respond [STATUS] [BODY]": a response the proxy writes itself.
// A lone argument is the status if it is three digits and not quoted, else
// the body; of two, the status is the one of three unquoted digits (Caddy
// writes "respond BODY STATUS").
type Respond struct {
	Pos    Position
	Status int    // 200-999; default 200
	Body   string // may hold the placeholders of HeaderOp; empty for 1xx, 204 and 304
}

// Redir is "redir TO [CODE]": a redirect to TO (placeholders allowed, as
// in "https://new.example.com{uri}").
type Redir struct {
	Pos Position
	// To is a path starting with "/" (not "//") or an absolute http:// or
	// https:// URL, once its placeholders are filled in.
	To   string
	Code int // 300-308; default 302; the words "permanent" (301) and "temporary" (302) are accepted
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
//	tls internal [{ on_demand; client_auth { ... } }]
//	tls CERT_FILE KEY_FILE [{ client_auth { ... } }]
//	tls EMAIL
//	tls [EMAIL] {
//		issuer acme|internal
//		email EMAIL
//		ca URL
//		ca_root PEM_FILE
//		on_demand
//		client_auth {
//			trusted_ca_cert_file PEM_FILE...
//		}
//	}
//
// Email, CA and CARoot are ACME settings: Parse rejects them with the
// internal issuer. With TLSAuto they apply to the names that get ACME
// certificates. client_auth goes with every mode; sites that share a host
// on several ports must agree on it, as a TLS handshake names the host
// and not the port.
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
	// ClientCAFiles are the PEM files of "client_auth { trusted_ca_cert_file
	// F... }": when set, every TLS handshake for the site's names must
	// present a client certificate that chains to one of them (mutual TLS).
	// As written, each once, in file order; Parse does not read them
	// (tlsmgr does).
	ClientCAFiles []string
}

// LBPolicy is how a session picks its backend (once, when it starts).
type LBPolicy int

const (
	// LBRoundRobin takes the healthy backends in turn (the default).
	LBRoundRobin LBPolicy = iota
	// LBLeastConn takes the healthy backend with the fewest sessions.
	LBLeastConn
	// LBRandom takes a healthy backend at random.
	LBRandom
	// LBFirst takes the first healthy backend in file order.
	LBFirst
	// LBCookie keeps a client on the backend named in a signed cookie
	// (LBKey is the cookie's name, default "roamgate_lb"), so a client
	// that comes back on a new connection lands where it was; without a
	// valid cookie it picks round robin and sets the cookie.
	LBCookie
	// LBHeader hashes the value of a request header (LBKey) onto the
	// healthy backends (rendezvous hashing); without the header, round
	// robin.
	LBHeader
)

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
	// KeepaliveIdle closes a session's upstream connection that has been
	// idle this long (the next request dials a new one). 0 means never: a
	// session keeps its connections for its whole life. Default 0.
	KeepaliveIdle time.Duration

	// LBPolicy and LBKey: lb_policy round_robin|least_conn|random|first|
	// cookie [NAME]|header NAME. Default round_robin. LBKey is the cookie
	// name as written (default DefaultLBCookie) or the header name in
	// canonical form; "" for the other policies.
	LBPolicy LBPolicy
	LBKey    string
	// LBTryDuration is how long a request that could not reach a backend
	// (a failed dial; a replayable request whose connection died before any
	// response byte) keeps trying the session's backend, LBTryInterval
	// apart, while no other healthy backend is left to move to. Moving to
	// another healthy backend needs no try duration: each backend gets one
	// try at once. 0 (the default) means no waiting; LBTryInterval defaults
	// to 250ms.
	LBTryDuration time.Duration
	LBTryInterval time.Duration

	// Active health checks (health_uri, health_interval, health_timeout,
	// health_status): when HealthURI is set, each backend gets a GET of it
	// every HealthInterval (default 30s), failing after HealthTimeout
	// (default 5s) or on a status other than HealthStatus (default: any
	// 2xx; "2xx" style classes are stored as 200, 300, ... with
	// HealthStatusClass set). The defaults are set even when HealthURI is
	// empty; codes are 100-599.
	HealthURI         string
	HealthInterval    time.Duration
	HealthTimeout     time.Duration
	HealthStatus      int
	HealthStatusClass bool

	// Passive health checks (fail_duration, max_fails, unhealthy_status):
	// when FailDuration is set, a backend with MaxFails (default 1)
	// failures within FailDuration is unhealthy until they age out. A
	// failure is a failed dial, a timeout, or a response whose status is in
	// UnhealthyStatus (classes such as 5xx are stored as 500 with the class
	// bit, see StatusMatcher). MaxFails is 1 even when FailDuration is 0.
	FailDuration    time.Duration
	MaxFails        int
	UnhealthyStatus []StatusMatcher

	// HeaderUp and HeaderDown modify the request to the backend and the
	// backend's response (header_up, header_down).
	HeaderUp   []HeaderOp
	HeaderDown []HeaderOp

	// TLS is set when the upstreams are https://, and then for all of
	// them: Parse refuses a reverse_proxy that mixes https:// upstreams
	// with plain ones (the tls_* settings apply to every upstream, and a
	// session that moves must not move to cleartext), and tls_*
	// subdirectives without https:// upstreams.
	TLS *UpstreamTLS
}

// UpstreamTLS is TLS to a reverse_proxy's upstreams (https://), with its
// tls_* subdirectives. Without any, the upstreams' certificates are
// verified against the system roots for each upstream's host (also sent
// as SNI when it is a name).
type UpstreamTLS struct {
	Pos Position // the first https:// upstream
	// ServerName is tls_server_name: the name sent as SNI and checked in
	// every upstream's certificate, in place of each upstream's host.
	ServerName string
	// InsecureSkipVerify is tls_insecure_skip_verify: any certificate is
	// accepted. Parse refuses it along with tls_ca.
	InsecureSkipVerify bool
	// CAFiles are tls_ca's PEM files, as written, each once: the roots
	// that verify the upstreams' certificates, in place of the system's.
	CAFiles []File
	// ClientCert and ClientKey are tls_client_certificate's PEM files, as
	// written: the certificate roamgate presents to upstreams that ask for
	// one (mutual TLS). Zero when unset.
	ClientCert, ClientKey File
}

// File is a file a Roamfile names, as written (relative to the working
// directory), and where. Parse does not read it.
type File struct {
	Pos  Position
	Path string
}

// StatusMatcher matches a status code ("503") or a class ("5xx").
type StatusMatcher struct {
	Code  int  // the code, or the class's first code (500 for 5xx)
	Class bool // match Code/100 only
}

// Matches reports whether code matches.
func (m StatusMatcher) Matches(code int) bool {
	if m.Class {
		return code/100 == m.Code/100
	}
	return code == m.Code
}

// Upstream is one backend of a reverse_proxy.
type Upstream struct {
	Pos Position
	// Addr is the dial address "host:port" (IPv6 in brackets), or
	// "unix/PATH". An upstream written without a port gets port 80, or 443
	// after "https://"; "http://" is accepted and dropped.
	Addr string
	// TLS is set for an https:// upstream (see ReverseProxy.TLS).
	TLS bool
	// Text is the upstream as written.
	Text string
}
