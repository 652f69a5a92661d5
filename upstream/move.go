package upstream

import (
	"errors"
	"net/http"
	"slices"

	"go.uber.org/zap"
)

// errMoved fails a dial to a backend the lease left while it dialled; the
// request goes to the new backend.
var errMoved = errors.New("upstream lease moved")

// Why a session moved, the "reason" of the "session moved" log line and of
// SessionMoves.
const (
	moveUnhealthy   = "unhealthy"
	moveUnreachable = "unreachable"
	moveReload      = "reload" // an Update removed its backend
)

// route returns the backend of the lease's next attempt. When the lease's
// backend is unhealthy, or the last dial to it failed, and another healthy
// backend exists, the lease moves there first: its policy picks among the
// healthy backends other than its own, preferring those not in failed (the
// backends this request already could not reach). An unreachable backend
// with nowhere else to go is tried again; an unhealthy one fails the
// request with ErrNoHealthyBackend. A lease whose backend an Update removed
// always moves (see leaveFor). Candidates come from the pool's newest
// configuration.
func (l *Lease) route(req *http.Request, failed []*Backend) (*Backend, error) {
	l.mu.Lock()
	b, unreachable, closed := l.backend.Load(), l.unreachable, l.closed
	l.mu.Unlock()
	if closed {
		return nil, ErrLeaseClosed
	}
	if b.removed.Load() {
		return l.leaveFor(b, req, failed)
	}
	healthy := b.Healthy()
	if healthy && !unreachable {
		return b, nil
	}
	st := l.pool.state()
	cands := st.healthyExcept(b, failed)
	if len(cands) == 0 && !healthy {
		cands = st.healthyExcept(b, nil)
	}
	if len(cands) == 0 {
		if healthy {
			return b, nil
		}
		return nil, ErrNoHealthyBackend
	}
	reason := moveUnhealthy
	if healthy {
		reason = moveUnreachable
	}
	return l.move(b, st.sel.pick(cands, req), reason)
}

// drain readies the lease to leave b, a backend an Update removed, unless
// it has left it already: its idle connections close now ("moved"), as no
// exchange starts on b any more, and a request waiting for a connection is
// woken to route again, which moves the lease. Otherwise the lease moves at
// its next request, whose cookie or header the policy reads; its exchanges
// in flight finish on b first (release closes their connections).
func (l *Lease) drain(b *Backend) {
	l.mu.Lock()
	if l.closed || l.backend.Load() != b {
		l.mu.Unlock()
		return
	}
	var idle []*conn
	l.conns = slices.DeleteFunc(l.conns, func(c *conn) bool {
		if !c.busy {
			idle = append(idle, c)
		}
		return !c.busy
	})
	l.wakeLocked()
	l.mu.Unlock()
	for _, c := range idle {
		c.close(reasonMoved)
	}
}

// wakeLocked hands the first waiter a dial slot, whatever the bound: the
// lease's backend was removed, so the waiter's dial gives the slot back at
// once and its request routes again (see dial).
func (l *Lease) wakeLocked() {
	if len(l.waiters) == 0 {
		return
	}
	w := l.waiters[0]
	l.waiters = l.waiters[1:]
	l.dialing++
	w <- nil
}

// leaveFor moves the lease off b, a removed backend, for req: to the backend of the same address in the pool's newest
// configuration when there is a healthy one (the backend stayed, its TLS
// settings changed: see Pool.Update), else where the policy picks among the
// healthy backends, preferring those not in failed. With none healthy it
// moves where the policy picks among all, and fails the request with
// ErrNoHealthyBackend until one recovers, as a new lease would. It returns
// the lease's backend afterwards.
func (l *Lease) leaveFor(b *Backend, req *http.Request, failed []*Backend) (*Backend, error) {
	st := l.pool.state()
	cands := st.healthyExcept(b, failed)
	if len(cands) == 0 {
		cands = st.healthyExcept(b, nil)
	}
	var to *Backend
	for _, c := range cands {
		if c.Addr == b.Addr {
			to = c
			break
		}
	}
	switch {
	case to != nil:
	case len(cands) > 0:
		to = st.sel.pick(cands, req)
	default:
		to = st.sel.pick(st.backends, req)
	}
	got, err := l.move(b, to, moveReload)
	if err != nil {
		return nil, err
	}
	if got.removed.Load() {
		// Another Update removed it as well, after this one picked it.
		return l.leaveFor(got, req, failed)
	}
	if !got.Healthy() {
		return nil, ErrNoHealthyBackend
	}
	return got, nil
}

// move moves the lease from its backend to another: the idle connections
// close now and the busy ones when their round trips end (both counted as
// "moved"), and waiting requests get dial slots on the new backend. It
// returns the lease's backend afterwards, which is not to when another
// request of the session moved the lease first.
func (l *Lease) move(from, to *Backend, reason string) (*Backend, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrLeaseClosed
	}
	if cur := l.backend.Load(); cur != from {
		l.mu.Unlock()
		return cur, nil
	}
	var idle []*conn
	for _, c := range l.conns {
		if !c.busy {
			idle = append(idle, c)
		}
	}
	// Busy connections leave the set now, so the new backend gets the
	// lease's full bound; release closes them when their responses end.
	l.conns = nil
	l.peak = 0
	l.unreachable = false
	l.backend.Store(to)
	from.dropLease(l)
	toRemoved := to.addLease(l)
	for l.grantLocked() {
	}
	l.mu.Unlock()

	for _, c := range idle {
		c.close(reasonMoved)
	}
	l.pool.metrics.SessionMoves.WithLabelValues(from.Addr, reason).Inc()
	if ce := l.logger.Check(zap.InfoLevel, "session moved"); ce != nil {
		ce.Write(zap.Uint64("session", l.sessionID), zap.String("from", from.Addr),
			zap.String("to", to.Addr), zap.String("reason", reason))
	}
	if toRemoved {
		// An Update removed to after this move picked it, and its sweep
		// may have missed the lease.
		l.drain(to)
	}
	return l.Backend(), nil
}
