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
	hash    uint64       // of Addr, for the Header policy
	leases  atomic.Int64 // open leases on this backend
	healthy atomic.Bool  // the health state last decided (see health.go)
	// removed is set when an Update took the backend out of the pool: its
	// leases move off it (see Pool.Update). It is never cleared; a backend
	// configured again later is a new Backend.
	removed atomic.Bool

	mu         sync.Mutex  // guards the following
	activeDown bool        // the last active check failed
	fails      []time.Time // the latest passive failures, oldest first, at most MaxFails
	recovery   *time.Timer // re-decides health when passive failures age out
	// sessions are the leases on the backend, for an Update that removes
	// it to move them. Lock order: a lease's mu, then this.
	sessions map[*Lease]struct{}
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
func (b *Backend) dial(ctx context.Context, st *poolState, tickets tls.ClientSessionCache) (net.Conn, error) {
	if b.tls == nil {
		return st.dialer.DialContext(ctx, b.network, b.address)
	}
	ctx, cancel := context.WithTimeout(ctx, st.cfg.DialTimeout)
	defer cancel()
	nc, err := st.dialer.DialContext(ctx, b.network, b.address)
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

// addLease counts l on the backend and reports whether the backend has
// been removed meanwhile: an Update's sweep may have missed l, and the
// caller drains it (a new lease, holding no connection, needs nothing:
// its first request moves it).
func (b *Backend) addLease(l *Lease) (removed bool) {
	b.leases.Add(1)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sessions == nil {
		b.sessions = make(map[*Lease]struct{})
	}
	b.sessions[l] = struct{}{}
	return b.removed.Load()
}

// dropLease forgets l, which closed or moved off the backend.
func (b *Backend) dropLease(l *Lease) {
	b.leases.Add(-1)
	b.mu.Lock()
	delete(b.sessions, l)
	b.mu.Unlock()
}

// leaseList returns the leases on the backend now.
func (b *Backend) leaseList() []*Lease {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Lease, 0, len(b.sessions))
	for l := range b.sessions {
		out = append(out, l)
	}
	return out
}

// Pool is one reverse_proxy's set of backends. It hands out a Lease per
// client session; the pool itself holds no connections to serve requests.
// With active health checks configured, Start runs the checker and Close
// stops it; Update applies a new configuration to the live pool (see
// update.go). The proxy owns the pool: it updates it on reload and calls
// Close when it shuts down or no reverse_proxy uses the pool any more. A
// Pool is safe for concurrent use.
type Pool struct {
	logger   *zap.Logger
	metrics  *Metrics
	now      func() time.Time // the clock of passive failures; tests replace it
	armDelay time.Duration    // abortArmDelay; tests replace it
	growWait time.Duration    // growWait; tests replace it

	// st is the configuration being served: New and Update publish one
	// whole, and a request reads it once (see poolState).
	st atomic.Pointer[poolState]

	// updating serializes Update and Close. Lock order: updating, then a
	// lease's mu, then a backend's mu, then mu.
	updating sync.Mutex

	mu      sync.Mutex // guards the following
	started bool
	closed  bool
	ctx     context.Context    // Start's, for the checkers Update starts
	stop    context.CancelFunc // ends the checker; nil while none runs
	done    chan struct{}      // closed when the checker has exited
}

// poolState is one configuration of a pool, immutable once published. A
// round trip loads it once and takes its limits (tries, timeouts) from it,
// so a request sees one configuration whole; where a session goes (a move)
// is always decided on the newest.
type poolState struct {
	cfg      Config     // checked
	backends []*Backend // in configuration order; none removed when published
	sel      selector
	dialer   net.Dialer
}

// state returns the configuration being served.
func (p *Pool) state() *poolState { return p.st.Load() }

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
	tlsConfs, err := checkedTLS(cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream pool: %w", err)
	}
	p := &Pool{
		logger:   logger,
		metrics:  metrics,
		now:      time.Now,
		armDelay: abortArmDelay,
		growWait: growWait,
	}
	warnInsecure(logger, cfg)
	backends := make([]*Backend, len(cfg.Backends))
	for i, addr := range cfg.Backends {
		backends[i] = p.newBackend(addr, tlsConfs, i)
	}
	p.st.Store(newState(cfg, backends))
	return p, nil
}

// checkedTLS returns the TLS configuration of each backend of cfg, nil
// without Config.TLS.
func checkedTLS(cfg Config) ([]*tls.Config, error) {
	if cfg.TLS == nil {
		return nil, nil
	}
	return tlsConfigs(cfg.TLS, cfg.Backends)
}

// warnInsecure logs that cfg does not verify its backends' certificates.
func warnInsecure(logger *zap.Logger, cfg Config) {
	if cfg.TLS != nil && cfg.TLS.InsecureSkipVerify {
		logger.Warn("upstream TLS certificates are not verified: anyone on the path to the backends can read and change the traffic",
			zap.Strings("backends", cfg.Backends))
	}
}

// newBackend returns a healthy backend of p for addr, the i-th of the
// configuration whose TLS configurations are tlsConfs (nil: plain).
func (p *Pool) newBackend(addr string, tlsConfs []*tls.Config, i int) *Backend {
	b := &Backend{Addr: addr, pool: p, hash: mix64(fnv64a(addr))}
	b.network, b.address = dialTarget(addr)
	if tlsConfs != nil {
		b.tls = tlsConfs[i]
	}
	b.healthy.Store(true)
	p.metrics.Healthy.WithLabelValues(addr).Set(1)
	return b
}

// newState returns the state serving cfg (checked) with backends.
func newState(cfg Config, backends []*Backend) *poolState {
	return &poolState{
		cfg:      cfg,
		backends: backends,
		sel:      newSelector(cfg, backends),
		dialer:   net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second},
	}
}

// Backends returns the pool's backends in configuration order: those of
// its newest configuration (see Update).
func (p *Pool) Backends() []*Backend { return p.state().backends }

// Lease starts a client session's lease. The pool's policy picks the
// session's backend now, among the healthy ones, from req: the session's
// first request to this pool, which the Cookie and Header policies read (nil
// picks round robin). The lease keeps that backend for its whole life unless
// the backend becomes unhealthy or unreachable (see Lease.RoundTrip), or an
// Update removes it from the pool. When
// no backend is healthy the policy picks among all of them, and requests
// fail with ErrNoHealthyBackend until one recovers. The lease owns no
// connection until its first request. sessionID only labels logs. The
// caller must Close the lease when the session ends.
func (p *Pool) Lease(sessionID uint64, req *http.Request) *Lease {
	st := p.state()
	cands := st.healthyExcept(nil, nil)
	if len(cands) == 0 {
		cands = st.backends
	}
	b := st.sel.pick(cands, req)
	l := &Lease{
		pool:      p,
		sessionID: sessionID,
		logger:    p.logger,
	}
	l.backend.Store(b)
	// An Update that removed b meanwhile moves the lease at its first
	// request; it holds no connection to close before then.
	b.addLease(l)
	return l
}

// healthyExcept returns the healthy backends other than except and those in
// skip, in configuration order.
func (st *poolState) healthyExcept(except *Backend, skip []*Backend) []*Backend {
	cands := make([]*Backend, 0, len(st.backends))
	for _, b := range st.backends {
		if b == except || slices.Contains(skip, b) || !b.Healthy() {
			continue
		}
		cands = append(cands, b)
	}
	return cands
}
