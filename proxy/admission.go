package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Admission decisions, the "decision" label of roamgate_quic_admission_total.
const (
	admitRetryRate  = "retry_rate"   // over handshake_rate: prove the address first
	admitRetryIP    = "retry_per_ip" // an unproven address over handshake_rate_per_ip
	admitRefusedIP  = "refused_per_ip"
	admitMaxTracked = 1 << 16 // client addresses tracked at once
)

// errHandshakeRate refuses a new connection from a proven address over its
// rate (the client sees CONNECTION_REFUSED).
var errHandshakeRate = errors.New("new connections from this address over handshake_rate_per_ip")

// admission decides, before any handshake state exists, what becomes of a
// new QUIC connection attempt. Over handshake_rate (all clients) an
// attempt without a token gets a Retry: the client must echo it from its
// address, so a flood from spoofed addresses costs one stateless packet
// each. Per client address (an IPv6 /64) two buckets of
// handshake_rate_per_ip: attempts not yet proven draw on one, and over it
// get a Retry (a spoofer can only make its victims take one more round
// trip); proven attempts draw on the other, and over it are refused (the
// address is real, and flooding).
type admission struct {
	all     *rate.Limiter // nil: Retry always
	perIP   rate.Limit    // 0: no per-address limit
	burst   int
	now     func() time.Time
	counted *prometheus.CounterVec
	errLog  *lazyLogger

	mu    sync.Mutex
	ips   map[netip.Prefix]*ipBuckets
	swept time.Time
}

type ipBuckets struct{ unproven, proven *rate.Limiter }

func newAdmission(all, perIP int, counted *prometheus.CounterVec, errLog *lazyLogger) *admission {
	a := &admission{
		perIP: rate.Limit(perIP), burst: 2 * perIP, now: time.Now,
		counted: counted, errLog: errLog, ips: map[netip.Prefix]*ipBuckets{},
	}
	if all > 0 {
		a.all = rate.NewLimiter(rate.Limit(all), all)
	}
	return a
}

// configure sets the transport's hooks.
func (a *admission) configure(tr *quic.Transport) {
	tr.VerifySourceAddress = a.verifySourceAddress
	tr.ConnContext = a.connContext
}

// verifySourceAddress is the transport's hook for an attempt without a
// valid token: true sends a Retry.
func (a *admission) verifySourceAddress(addr net.Addr) bool {
	if a.all == nil || !a.all.AllowN(a.now(), 1) {
		a.counted.WithLabelValues(admitRetryRate).Inc()
		return true
	}
	if a.perIP == 0 {
		return false
	}
	b := a.buckets(addr)
	if b == nil || !b.unproven.AllowN(a.now(), 1) {
		// Untracked (the table is full: a flood from many addresses)
		// or over the rate: prove the address first.
		a.counted.WithLabelValues(admitRetryIP).Inc()
		return true
	}
	return false
}

// connContext is the transport's hook for an attempt about to get a
// connection: a proven address over its rate is refused.
func (a *admission) connContext(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
	if a.perIP == 0 || !ci.AddrVerified {
		return ctx, nil
	}
	b := a.buckets(ci.RemoteAddr)
	if b == nil || b.proven.AllowN(a.now(), 1) {
		return ctx, nil
	}
	a.counted.WithLabelValues(admitRefusedIP).Inc()
	a.errLog.get().Warn("new connection refused", zap.Stringer("remote", ci.RemoteAddr), zap.Error(errHandshakeRate))
	return ctx, errHandshakeRate
}

// buckets returns addr's buckets, or nil when the table is full.
func (a *admission) buckets(addr net.Addr) *ipBuckets {
	key, ok := clientKey(addr)
	if !ok {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if b := a.ips[key]; b != nil {
		return b
	}
	if len(a.ips) >= admitMaxTracked && !a.sweepLocked() {
		return nil
	}
	b := &ipBuckets{rate.NewLimiter(a.perIP, a.burst), rate.NewLimiter(a.perIP, a.burst)}
	a.ips[key] = b
	return b
}

// sweepLocked forgets the addresses whose buckets have refilled (a fresh
// pair is the same), at most once a second, and reports whether room was
// made.
func (a *admission) sweepLocked() bool {
	now := a.now()
	if now.Sub(a.swept) < time.Second {
		return false
	}
	a.swept = now
	full := float64(a.burst)
	for k, b := range a.ips {
		if b.unproven.TokensAt(now) >= full && b.proven.TokensAt(now) >= full {
			delete(a.ips, k)
		}
	}
	return len(a.ips) < admitMaxTracked
}

// clientKey is the address a client is counted by: its IPv4 address, or
// its IPv6 /64 (one subscriber's prefix).
func clientKey(addr net.Addr) (netip.Prefix, bool) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	return p, err == nil
}
