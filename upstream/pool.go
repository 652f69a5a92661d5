package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Backend is one upstream server of a Pool.
type Backend struct {
	// Addr is the dial address: "host:port", or "unix/PATH" for a Unix
	// domain socket (see Config.Backends).
	Addr string

	network, address string      // what Addr dials
	tls              *tls.Config // nil: plain TCP (see Config.TLS)

	pool    *Pool
	idx     int          // position in the configuration
	hash    uint64       // of Addr, for the Header policy
	leases  atomic.Int64 // open leases on this backend
	healthy atomic.Bool  // the health state last decided (see health.go)

	mu         sync.Mutex  // guards the following
	activeDown bool        // the last active check failed
	fails      []time.Time // the latest passive failures, oldest first, at most MaxFails
	recovery   *time.Timer // re-decides health when passive failures age out
}

// dialTarget splits a backend address into the network and address to dial.
func dialTarget(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		return "unix", path
	}
	return "tcp", addr
}

// UnixPrefix starts a backend address naming a Unix domain socket:
// "unix//run/app.sock" (absolute), "unix/app.sock" (relative to the working
// directory), as in Caddy.
const UnixPrefix = "unix/"

// dial opens a connection to b: TCP (or a Unix socket), and over it TLS
// when the pool has Config.TLS, resuming a TLS session from tickets (nil:
// none). The connect and the handshake together take at most
// Config.DialTimeout.
func (b *Backend) dial(ctx context.Context, tickets tls.ClientSessionCache) (net.Conn, error) {
	p := b.pool
	if b.tls == nil {
		return p.dialer.DialContext(ctx, b.network, b.address)
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	nc, err := p.dialer.DialContext(ctx, b.network, b.address)
	if err != nil {
		return nil, err
	}
	return b.handshake(ctx, nc, tickets)
}

// hostHeader is the Host a request roamgate makes itself (a health check)
// names: the backend's host:port, or localhost for a socket.
func (b *Backend) hostHeader() string {
	if b.network == "unix" {
		return "localhost"
	}
	return b.Addr
}

// Leases reports how many open leases (client sessions) use the backend.
func (b *Backend) Leases() int64 { return b.leases.Load() }

// Pool is one reverse_proxy's set of backends. It hands out a Lease per
// client session; the pool itself holds no connections to serve requests.
// With active health checks configured, Start runs the checker and Close
// stops it; the proxy owns the pool and calls Close when it shuts down or
// replaces it on reload. A Pool is safe for concurrent use.
type Pool struct {
	backends []*Backend
	cfg      Config
	dialer   net.Dialer
	logger   *zap.Logger
	metrics  *Metrics
	sel      selector
	now      func() time.Time // the clock of passive failures; tests replace it
	armDelay time.Duration    // abortArmDelay; tests replace it
	growWait time.Duration    // growWait; tests replace it

	mu      sync.Mutex // guards the following
	started bool
	closed  bool
	stop    context.CancelFunc // ends the checker
	done    chan struct{}      // closed when the checker has exited
}

// New checks cfg and returns a Pool. A nil logger logs nothing; nil metrics
// are counted nowhere. Every backend starts healthy.
func New(cfg Config, logger *zap.Logger, metrics *Metrics) (*Pool, error) {
	cfg, err := cfg.checked()
	if err != nil {
		return nil, fmt.Errorf("upstream pool: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	p := &Pool{
		cfg:      cfg,
		dialer:   net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second},
		logger:   logger,
		metrics:  metrics,
		now:      time.Now,
		armDelay: abortArmDelay,
		growWait: growWait,
	}
	var tlsConfs []*tls.Config
	if cfg.TLS != nil {
		if tlsConfs, err = tlsConfigs(cfg.TLS, cfg.Backends); err != nil {
			return nil, fmt.Errorf("upstream pool: %w", err)
		}
		if cfg.TLS.InsecureSkipVerify {
			logger.Warn("upstream TLS certificates are not verified: anyone on the path to the backends can read and change the traffic",
				zap.Strings("backends", cfg.Backends))
		}
	}
	for i, addr := range cfg.Backends {
		b := &Backend{Addr: addr, pool: p, idx: i, hash: mix64(fnv64a(addr))}
		b.network, b.address = dialTarget(addr)
		if tlsConfs != nil {
			b.tls = tlsConfs[i]
		}
		b.healthy.Store(true)
		metrics.Healthy.WithLabelValues(addr).Set(1)
		p.backends = append(p.backends, b)
	}
	p.sel = newSelector(cfg, p.backends)
	return p, nil
}

// Backends returns the pool's backends in configuration order.
func (p *Pool) Backends() []*Backend { return p.backends }

// Lease starts a client session's lease. The pool's policy picks the
// session's backend now, among the healthy ones, from req: the session's
// first request to this pool, which the Cookie and Header policies read (nil
// picks round robin). The lease keeps that backend for its whole life unless
// the backend becomes unhealthy or unreachable (see Lease.RoundTrip). When
// no backend is healthy the policy picks among all of them, and requests
// fail with ErrNoHealthyBackend until one recovers. The lease owns no
// connection until its first request. sessionID only labels logs. The
// caller must Close the lease when the session ends.
func (p *Pool) Lease(sessionID uint64, req *http.Request) *Lease {
	cands := p.healthyExcept(nil, nil)
	if len(cands) == 0 {
		cands = p.backends
	}
	b := p.sel.pick(cands, req)
	b.leases.Add(1)
	l := &Lease{
		pool:      p,
		sessionID: sessionID,
		logger:    p.logger,
	}
	l.backend.Store(b)
	return l
}

// healthyExcept returns the healthy backends other than except and those in
// skip, in configuration order.
func (p *Pool) healthyExcept(except *Backend, skip []*Backend) []*Backend {
	cands := make([]*Backend, 0, len(p.backends))
	for _, b := range p.backends {
		if b == except || slices.Contains(skip, b) || !b.Healthy() {
			continue
		}
		cands = append(cands, b)
	}
	return cands
}
