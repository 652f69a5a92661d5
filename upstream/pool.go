package upstream

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Defaults for zero Config fields.
const (
	DefaultMaxConnsPerSession = 8
	DefaultDialTimeout        = 10 * time.Second
)

// Config configures a Pool: one reverse_proxy's backends and the limits of
// the leases taken from it.
type Config struct {
	// Backends are dial addresses ("host:port"). At least one.
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
}

// Backend is one upstream server of a Pool.
type Backend struct {
	// Addr is the dial address, "host:port".
	Addr string

	leases atomic.Int64 // open leases on this backend
}

// Leases reports how many open leases (client sessions) use the backend.
func (b *Backend) Leases() int64 { return b.leases.Load() }

// Pool is one reverse_proxy's set of backends. It hands out a Lease per
// client session; the pool itself holds no connections. A Pool is safe for
// concurrent use.
type Pool struct {
	backends []*Backend
	cfg      Config
	dialer   net.Dialer
	logger   *zap.Logger
	metrics  *Metrics

	next atomic.Uint64 // round-robin cursor
}

// New checks cfg and returns a Pool. A nil logger logs nothing; nil metrics
// are counted nowhere.
func New(cfg Config, logger *zap.Logger, metrics *Metrics) (*Pool, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("upstream pool: no backends")
	}
	if cfg.MaxConnsPerSession < 0 || cfg.DialTimeout < 0 || cfg.ResponseHeaderTimeout < 0 {
		return nil, errors.New("upstream pool: negative limit")
	}
	if cfg.MaxConnsPerSession == 0 {
		cfg.MaxConnsPerSession = DefaultMaxConnsPerSession
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	p := &Pool{
		cfg:     cfg,
		dialer:  net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second},
		logger:  logger,
		metrics: metrics,
	}
	for _, addr := range cfg.Backends {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("upstream pool: backend %q: %w", addr, err)
		}
		p.backends = append(p.backends, &Backend{Addr: addr})
	}
	return p, nil
}

// Backends returns the pool's backends in configuration order.
func (p *Pool) Backends() []*Backend { return p.backends }

// Lease starts a client session's lease: it picks the session's backend
// (round-robin across the pool, chosen once for the lease's whole life) and
// owns no connection until the first request. sessionID only labels logs.
// The caller must Close the lease when the session ends.
func (p *Pool) Lease(sessionID uint64) *Lease {
	b := p.backends[(p.next.Add(1)-1)%uint64(len(p.backends))]
	b.leases.Add(1)
	return &Lease{
		pool:      p,
		backend:   b,
		sessionID: sessionID,
		logger:    p.logger,
	}
}
