package upstream

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults for zero Config fields.
const (
	DefaultMaxConnsPerSession = 8
	DefaultDialTimeout        = 10 * time.Second
	DefaultTryInterval        = 250 * time.Millisecond
	DefaultHealthInterval     = 30 * time.Second
	DefaultHealthTimeout      = 5 * time.Second
	DefaultCookieName         = "roamgate_lb"
)

// Config configures a Pool: one reverse_proxy's backends, how a session
// picks one, how their health is judged, and the limits of the leases taken
// from it.
type Config struct {
	// Backends are dial addresses, "host:port" or UnixPrefix+path for a
	// Unix domain socket (a sidecar's backend on the same host: no TCP/IP
	// stack on the way), in configuration order (the order the First policy
	// follows). At least one.
	Backends []string
	// MaxConnsPerSession bounds the connections one lease holds to its
	// backend; requests beyond it wait for a connection. Zero means
	// DefaultMaxConnsPerSession.
	MaxConnsPerSession int
	// DialTimeout bounds connecting to a backend. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a response header once the
	// request header was written. Zero means no limit.
	ResponseHeaderTimeout time.Duration
	// KeepaliveIdle closes a lease's connection that has been idle this
	// long; the next request dials a new one. Zero means never: a session
	// keeps its connections for its whole life.
	KeepaliveIdle time.Duration
	// TLS, when set, makes every connection to the backends TLS (see TLS);
	// no backend may be a Unix socket then. Nil means plain TCP.
	TLS *TLS

	// Policy picks a session's backend, once, when its lease is taken (and
	// again only when that backend becomes unhealthy or unreachable, or an
	// Update removes it). The zero value is RoundRobin.
	Policy Policy
	// PolicyKey is the cookie name for Cookie (empty means
	// DefaultCookieName) and the request header name for Header
	// (required). Other policies ignore it.
	PolicyKey string
	// CookieSecret is the HMAC-SHA256 key that signs Cookie policy values.
	// Required for Cookie; it should persist across restarts and be shared
	// by every instance behind one address, or clients lose their backend.
	CookieSecret []byte

	// TryDuration is how long a request that reached no backend (a failed
	// dial; a replayable request whose reused connection died before any
	// response byte) keeps trying, on the session's backend or, once that
	// counts as unhealthy or unreachable, on the next healthy one. Zero
	// means one attempt.
	TryDuration time.Duration
	// TryInterval is the pause before trying the same backend again, or
	// before looking again for a healthy one. Moving to another backend
	// does not wait. Zero means DefaultTryInterval.
	TryInterval time.Duration

	// Health configures active health checks. The zero value checks nothing.
	Health ActiveHealth
	// Passive configures passive health checks. The zero value checks
	// nothing.
	Passive PassiveHealth
}

// Policy is how a lease picks its backend. Every policy picks among the
// healthy backends only, and none looks at the client's address: a client
// that migrates (RFC 9000 §9) must land where it was.
type Policy int

const (
	// RoundRobin takes the healthy backends in turn.
	RoundRobin Policy = iota
	// LeastConn takes the healthy backend with the fewest open leases.
	LeastConn
	// Random takes a healthy backend at random.
	Random
	// First takes the first healthy backend in configuration order.
	First
	// Cookie takes the backend a signed cookie (PolicyKey) names when it
	// is healthy, otherwise round robin; the proxy then sets the cookie
	// from Lease.Cookie, so a client that comes back on a new connection
	// lands where it was.
	Cookie
	// Header takes the healthy backend that the value of a request header
	// (PolicyKey) hashes to (rendezvous hashing: removing a backend moves
	// only the values that were on it); without the header, round robin.
	Header
)

var policyNames = [...]string{"round_robin", "least_conn", "random", "first", "cookie", "header"}

// String returns the policy's Roamfile name, such as "least_conn".
func (p Policy) String() string {
	if p < 0 || int(p) >= len(policyNames) {
		return "Policy(" + fmt.Sprint(int(p)) + ")"
	}
	return policyNames[p]
}

// ActiveHealth configures active health checks: with a URI set, the pool's
// checker (see Pool.Start) sends every backend "GET URI" on a connection of
// its own, never a session's, every Interval.
type ActiveHealth struct {
	// URI is the path (and query) to request, such as "/healthz". Empty
	// means no active checks.
	URI string
	// Interval is the time between checks. Zero means
	// DefaultHealthInterval.
	Interval time.Duration
	// Timeout bounds one check, dial to response header. Zero means
	// DefaultHealthTimeout.
	Timeout time.Duration
	// Status is the status a healthy backend answers: the exact code, or
	// with StatusClass its class (200 or 204 with StatusClass both mean
	// any 2xx). Zero means any 2xx.
	Status      int
	StatusClass bool
}

// PassiveHealth configures passive health checks: failures of real requests
// count against their backend.
type PassiveHealth struct {
	// FailDuration is how long a failure counts. Zero turns passive checks
	// off.
	FailDuration time.Duration
	// MaxFails failures within FailDuration make a backend unhealthy until
	// enough of them age out. Zero means 1.
	MaxFails int
	// UnhealthyStatus lists response statuses that count as failures (the
	// response still goes to the client). A failed dial, a response header
	// timeout, and an exchange the backend broke before its response
	// header ended (a reset or close of a fresh connection, a head that is
	// not HTTP) always count.
	UnhealthyStatus []StatusMatch
}

// StatusMatch matches a status code (503) or a class (5xx: Code 500, Class
// set).
type StatusMatch struct {
	Code  int  // the code, or any code of the class
	Class bool // match Code/100 only
}

// Matches reports whether code matches.
func (m StatusMatch) Matches(code int) bool {
	if m.Class {
		return code/100 == m.Code/100
	}
	return code == m.Code
}

// checked returns cfg with defaults filled in, or the first thing wrong
// with it.
func (cfg Config) checked() (Config, error) {
	if len(cfg.Backends) == 0 {
		return cfg, errors.New("no backends")
	}
	if cfg.MaxConnsPerSession < 0 || cfg.DialTimeout < 0 || cfg.ResponseHeaderTimeout < 0 ||
		cfg.KeepaliveIdle < 0 || cfg.TryDuration < 0 || cfg.TryInterval < 0 ||
		cfg.Health.Interval < 0 || cfg.Health.Timeout < 0 ||
		cfg.Passive.FailDuration < 0 || cfg.Passive.MaxFails < 0 {
		return cfg, errors.New("negative limit")
	}
	for _, addr := range cfg.Backends {
		if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
			if err := CheckSocketPath(path); err != nil {
				return cfg, fmt.Errorf("backend %q: %w", addr, err)
			}
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return cfg, fmt.Errorf("backend %q: %w", addr, err)
		}
	}
	if cfg.MaxConnsPerSession == 0 {
		cfg.MaxConnsPerSession = DefaultMaxConnsPerSession
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.TryInterval == 0 {
		cfg.TryInterval = DefaultTryInterval
	}

	switch cfg.Policy {
	case RoundRobin, LeastConn, Random, First:
	case Cookie:
		if len(cfg.CookieSecret) == 0 {
			return cfg, errors.New("lb policy cookie: no cookie secret")
		}
		if cfg.PolicyKey == "" {
			cfg.PolicyKey = DefaultCookieName
		}
		if !httpguts.ValidHeaderFieldName(cfg.PolicyKey) { // a cookie name is a token (RFC 6265 §4.1.1)
			return cfg, fmt.Errorf("lb policy cookie: invalid cookie name %q", cfg.PolicyKey)
		}
	case Header:
		if cfg.PolicyKey == "" {
			return cfg, errors.New("lb policy header: no header name")
		}
		if !httpguts.ValidHeaderFieldName(cfg.PolicyKey) {
			return cfg, fmt.Errorf("lb policy header: invalid header name %q", cfg.PolicyKey)
		}
		cfg.PolicyKey = http.CanonicalHeaderKey(cfg.PolicyKey)
	default:
		return cfg, fmt.Errorf("unknown lb policy %d", int(cfg.Policy))
	}

	if h := &cfg.Health; h.URI != "" {
		if _, err := url.ParseRequestURI(h.URI); err != nil || !strings.HasPrefix(h.URI, "/") || !validRequestTarget(h.URI) {
			return cfg, fmt.Errorf("health uri %q: want an absolute path", h.URI)
		}
		if h.Status != 0 && (h.Status < 100 || h.Status > 599) {
			return cfg, fmt.Errorf("health status %d out of range", h.Status)
		}
		if h.Interval == 0 {
			h.Interval = DefaultHealthInterval
		}
		if h.Timeout == 0 {
			h.Timeout = DefaultHealthTimeout
		}
	}
	if ps := &cfg.Passive; ps.FailDuration > 0 {
		if ps.MaxFails == 0 {
			ps.MaxFails = 1
		}
		for _, sm := range ps.UnhealthyStatus {
			if sm.Code < 100 || sm.Code > 599 {
				return cfg, fmt.Errorf("unhealthy status %d out of range", sm.Code)
			}
		}
	}
	return cfg, nil
}

// maxSocketPath is the longest Unix socket path Linux takes (sun_path holds
// 108 bytes with the terminating NUL); other systems allow 104 or more.
const maxSocketPath = 107

// CheckSocketPath checks the path of a Unix socket backend (the part of its
// address after UnixPrefix).
func CheckSocketPath(path string) error {
	switch {
	case path == "":
		return errors.New("missing socket path after " + UnixPrefix)
	case len(path) > maxSocketPath:
		return fmt.Errorf("socket path is %d bytes, longer than the %d a Unix socket address holds", len(path), maxSocketPath)
	case strings.ContainsRune(path, 0):
		return errors.New("socket path contains a NUL byte")
	}
	return nil
}
