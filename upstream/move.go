package upstream

import (
	"errors"
	"net/http"

	"go.uber.org/zap"
)

// errMoved fails a dial to a backend the lease left while it dialled; the
// request goes to the new backend.
var errMoved = errors.New("upstream lease moved")

// Why a session moved, the "reason" of the "session moved" log line.
const (
	moveUnhealthy   = "unhealthy"
	moveUnreachable = "unreachable"
)

// route returns the backend of the lease's next attempt. When the lease's
// backend is unhealthy, or the last dial to it failed, and another healthy
// backend exists, the lease moves there first: its policy picks among the
// healthy backends other than its own, preferring those not in failed (the
// backends this request already could not reach). An unreachable backend
// with nowhere else to go is tried again; an unhealthy one fails the
// request with ErrNoHealthyBackend.
func (l *Lease) route(req *http.Request, failed []*Backend) (*Backend, error) {
	l.mu.Lock()
	b, unreachable, closed := l.backend.Load(), l.unreachable, l.closed
	l.mu.Unlock()
	if closed {
		return nil, ErrLeaseClosed
	}
	healthy := b.Healthy()
	if healthy && !unreachable {
		return b, nil
	}
	p := l.pool
	cands := p.healthyExcept(b, failed)
	if len(cands) == 0 && !healthy {
		cands = p.healthyExcept(b, nil)
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
	return l.move(b, p.sel.pick(cands, req), reason)
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
	from.leases.Add(-1)
	to.leases.Add(1)
	for l.grantLocked() {
	}
	l.mu.Unlock()

	for _, c := range idle {
		c.close(reasonMoved)
	}
	l.pool.metrics.SessionMoves.WithLabelValues(from.Addr).Inc()
	if ce := l.logger.Check(zap.InfoLevel, "session moved"); ce != nil {
		ce.Write(zap.Uint64("session", l.sessionID), zap.String("from", from.Addr),
			zap.String("to", to.Addr), zap.String("reason", reason))
	}
	return to, nil
}
