package upstream

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// Lease is one client session's private connections to its backend.
//
// The backend is chosen once, when the lease is taken. Connections are
// dialled lazily: a request takes the oldest idle connection; only when all
// are busy and the lease is below Config.MaxConnsPerSession does it dial a
// new one, and beyond the bound it waits (FIFO). Idle connections stay open
// for the lease's whole life, so a client that sends one request at a time
// uses exactly one upstream connection from first request to last. No other
// lease ever uses them, and Close closes them all.
//
// Lease implements http.RoundTripper. It is safe for concurrent use.
type Lease struct {
	pool      *Pool
	backend   *Backend
	sessionID uint64
	logger    *zap.Logger

	mu      sync.Mutex   // guards the following
	conns   []*conn      // open connections in dial order, busy and idle
	dialing int          // dials in progress; each holds a slot under the bound
	peak    int          // most connections held at once: a dial below it is a replacement
	waiters []chan *conn // requests waiting for a connection; a nil send grants a dial slot
	closed  bool
	nextID  uint64 // connection IDs, for logs
}

var _ http.RoundTripper = (*Lease)(nil)

// Backend returns the backend the lease picked.
func (l *Lease) Backend() *Backend { return l.backend }

// Conns reports how many upstream connections the lease holds now.
func (l *Lease) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// RoundTrip sends req to the lease's backend over one of the lease's own
// connections and returns the response with its header read. The response
// body streams from the connection; closing it (or reading it to EOF) gives
// the connection back to the lease. req.URL, req.Host and req.Header are
// written as they are: the caller has already translated them.
//
// A request that finds a reused connection dead before any response byte
// arrived is retried once on a fresh connection when it is replayable (no
// body, and a safe method or an Idempotency-Key). RoundTrip always closes
// req.Body.
func (l *Lease) RoundTrip(req *http.Request) (*http.Response, error) {
	for retried := false; ; retried = true {
		c, err := l.acquire(req.Context())
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := c.roundTrip(req)
		if err == nil {
			return resp, nil
		}
		if !retried && errors.Is(err, errConnLost) && replayable(req) {
			l.pool.metrics.Retries.WithLabelValues(l.backend.Addr).Inc()
			continue
		}
		return nil, err
	}
}

// Close ends the lease: it closes every connection, idle or busy (a request
// in flight fails), and fails waiting requests with ErrLeaseClosed.
func (l *Lease) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns, waiters := l.conns, l.waiters
	l.conns, l.waiters = nil, nil
	l.dialing += len(waiters) // each waiter wakes holding a slot and gives it back
	l.mu.Unlock()

	for _, w := range waiters {
		w <- nil
	}
	for _, c := range conns {
		c.close(reasonSessionEnd)
	}
	l.backend.leases.Add(-1)
	return nil
}

// acquire returns a connection reserved for one round trip.
func (l *Lease) acquire(ctx context.Context) (*conn, error) {
	for {
		c, err := l.reserve(ctx)
		if err != nil || c == nil {
			if err == nil {
				c, err = l.dial(ctx)
			}
			return c, err
		}
		if !c.used || c.alive() {
			return c, nil
		}
		// The backend closed this idle connection (keep-alive timeout,
		// restart) or sent bytes nobody asked for: drop it and try again,
		// which dials its replacement.
		l.release(c, false, reasonBackendClosed)
	}
}

// reserve takes an idle connection, or a dial slot (nil, nil), waiting in
// line when the lease is at its bound.
func (l *Lease) reserve(ctx context.Context) (*conn, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrLeaseClosed
	}
	for _, c := range l.conns {
		if !c.busy {
			c.busy = true
			l.mu.Unlock()
			return c, nil
		}
	}
	if len(l.conns)+l.dialing < l.pool.cfg.MaxConnsPerSession {
		l.dialing++
		l.mu.Unlock()
		return nil, nil
	}
	w := make(chan *conn, 1)
	l.waiters = append(l.waiters, w)
	l.mu.Unlock()

	select {
	case c := <-w:
		return c, nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	if i := slices.Index(l.waiters, w); i >= 0 {
		l.waiters = slices.Delete(l.waiters, i, i+1)
		l.mu.Unlock()
		return nil, ctx.Err()
	}
	l.mu.Unlock()
	// A connection or slot was handed to us as the context ended: pass it on.
	if c := <-w; c != nil {
		l.release(c, true, "")
	} else {
		l.unreserve()
	}
	return nil, ctx.Err()
}

// dial opens a connection in a slot that reserve granted.
func (l *Lease) dial(ctx context.Context) (*conn, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		l.unreserve()
		return nil, ErrLeaseClosed
	}
	nc, err := l.pool.dialer.DialContext(ctx, "tcp", l.backend.Addr)
	if err != nil {
		l.unreserve()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		l.pool.metrics.DialErrors.WithLabelValues(l.backend.Addr).Inc()
		return nil, &DialError{Backend: l.backend.Addr, Err: err}
	}

	l.mu.Lock()
	l.dialing--
	if l.closed {
		l.mu.Unlock()
		_ = nc.Close()
		return nil, ErrLeaseClosed
	}
	reason := "new"
	if len(l.conns) < l.peak {
		reason = "replace"
	}
	l.nextID++
	c := newConn(l, l.nextID, nc)
	c.busy = true
	l.conns = append(l.conns, c)
	l.peak = max(l.peak, len(l.conns))
	l.mu.Unlock()

	l.pool.metrics.ConnsOpened.WithLabelValues(l.backend.Addr, reason).Inc()
	if ce := l.logger.Check(zap.DebugLevel, "upstream connection opened"); ce != nil {
		ce.Write(zap.Uint64("session", l.sessionID), zap.Uint64("conn", c.id),
			zap.String("backend", l.backend.Addr), zap.String("local", nc.LocalAddr().String()),
			zap.String("reason", reason))
	}
	return c, nil
}

// unreserve gives back a dial slot that produced no connection.
func (l *Lease) unreserve() {
	l.mu.Lock()
	l.dialing--
	l.grantLocked()
	l.mu.Unlock()
}

// grantLocked hands a free slot to the first waiter, if there is one.
func (l *Lease) grantLocked() {
	if l.closed || len(l.waiters) == 0 || len(l.conns)+l.dialing >= l.pool.cfg.MaxConnsPerSession {
		return
	}
	w := l.waiters[0]
	l.waiters = l.waiters[1:]
	l.dialing++
	w <- nil
}

// release ends a round trip on c: a reusable connection goes to the first
// waiter or back to idle; any other is closed for reason and its slot
// granted to a waiter.
func (l *Lease) release(c *conn, reuse bool, reason string) {
	l.mu.Lock()
	if reuse && !l.closed {
		if len(l.waiters) > 0 {
			w := l.waiters[0]
			l.waiters = l.waiters[1:]
			l.mu.Unlock()
			w <- c // stays busy: it changes hands
			return
		}
		c.busy = false
		l.mu.Unlock()
		return
	}
	if i := slices.Index(l.conns, c); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
	}
	l.grantLocked()
	l.mu.Unlock()
	if reason == "" {
		reason = reasonSessionEnd
	}
	c.close(reason)
}

// replayable reports whether req may be sent again after its connection died
// before any response byte: nothing of it can have been consumed (no body),
// and its method is safe or it carries an idempotency key (RFC 9110 §9.2.2).
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
