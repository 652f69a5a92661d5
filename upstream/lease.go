package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Lease is one client session's private connections to its backend.
//
// The backend is chosen once, when the lease is taken, and changes only when
// it becomes unhealthy or unreachable (see RoundTrip), or when an Update of
// the pool removes it (see Pool.Update). Connections are
// dialled lazily: a request takes the oldest idle connection; only when all
// are busy with requests their clients still wait for, and the lease is
// below Config.MaxConnsPerSession, does it dial a new one. A connection is
// free again the moment its response has been read whole, before the
// response's last bytes reach the client, so a client that sends its next
// request as soon as it has the last byte finds it idle. One whose client
// went away mid-exchange finishes it (the response read and discarded,
// within drainLimit and drainTimeout): a request waits for it rather than
// dialling. Beyond the bound requests wait (FIFO). So a session holds at
// most as many connections as its client ever had requests in flight at
// once, and a client that sends one request at a time uses exactly one
// upstream connection from first request to last. Idle connections stay
// open for the lease's whole life (or Config.KeepaliveIdle). No other lease
// ever uses them, and Close closes them all.
//
// Lease implements http.RoundTripper. It is safe for concurrent use.
type Lease struct {
	pool      *Pool
	sessionID uint64
	logger    *zap.Logger
	backend   atomic.Pointer[Backend] // stored under mu

	mu          sync.Mutex   // guards the following
	conns       []*conn      // open connections to the backend in dial order, busy and idle
	dialing     int          // dials in progress; each holds a slot under the bound
	peak        int          // most connections held at once: a dial below it is a replacement
	waiters     []chan *conn // requests waiting for a connection; a nil send grants a dial slot
	closed      bool
	unreachable bool                    // the last dial to the backend failed
	nextID      uint64                  // connection IDs, for logs
	dedicated   map[*Dedicated]struct{} // upgraded connections (see Upgrade)
	// tickets holds the TLS sessions of the lease's own connections, for
	// its next ones to resume: never another lease's (see TLS). Nil until
	// the first dial of a pool with Config.TLS.
	tickets tls.ClientSessionCache
}

var _ http.RoundTripper = (*Lease)(nil)

// Backend returns the lease's backend: the one it picked, or the one it
// moved to.
func (l *Lease) Backend() *Backend { return l.backend.Load() }

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
// Before each attempt, a lease whose backend is unhealthy, or whose last dial
// to it failed, moves when another healthy backend exists: its policy picks
// among the healthy ones, the old connections close (busy ones when their
// responses end), and the move is logged and counted. A lease whose backend
// an Update removed moves in the same way (see Pool.Update): no exchange
// starts on a removed backend. A lease on a healthy, reachable, configured
// backend never moves. With no healthy backend the request fails with
// ErrNoHealthyBackend.
//
// The request's limits (Config.TryDuration, TryInterval, DialTimeout,
// ResponseHeaderTimeout) are those of the pool's configuration when
// RoundTrip starts, even if an Update applies meanwhile.
//
// A request that reached no backend goes again within Config.TryDuration:
// after a failed dial (nothing was sent), and when it is replayable (no body,
// and a safe method or an Idempotency-Key) after a reused connection died
// before any response byte. The first such replay is immediate and free,
// even with a zero TryDuration, as a dead keep-alive connection is not the
// backend's failure. A request of which any byte may have reached the
// backend otherwise is never sent again. req's context bounds it all.
// RoundTrip always closes req.Body.
func (l *Lease) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	st := l.pool.state()
	var deadline time.Time // zero: one attempt
	if d := st.cfg.TryDuration; d > 0 {
		deadline = time.Now().Add(d)
	}
	var failed []*Backend // backends this request could not reach
	replayed := false
	_, err := l.route(req, failed)
	for {
		if err != nil {
			if errors.Is(err, ErrNoHealthyBackend) {
				// Wait for one to recover (a passive failure aging out).
				if err = l.pause(ctx, st, deadline); err == nil {
					_, err = l.route(req, failed)
					continue
				}
				if err == errNoMoreTries {
					err = ErrNoHealthyBackend
				}
			}
			closeBody(req)
			return nil, err
		}

		var c *conn
		if c, err = l.acquire(ctx, st); err != nil {
			if errors.Is(err, errMoved) {
				_, err = l.route(req, failed)
				continue
			}
			if de, ok := errors.AsType[*DialError](err); ok {
				failed = append(failed, de.b)
				_, err = l.again(ctx, st, req, failed, de.b, deadline, err)
				continue
			}
			closeBody(req)
			return nil, err
		}

		var resp *http.Response
		resp, err = c.roundTrip(st, req)
		if err == nil {
			c.backend.failStatus(resp.StatusCode)
			return resp, nil
		}
		switch {
		case errors.Is(err, ErrResponseHeaderTimeout):
			c.backend.fail(failHeaderTimeout, "response header timeout")
		case backendBroke(ctx, err):
			c.backend.fail(failBroken, err.Error())
		}
		if !errors.Is(err, errConnLost) || !replayable(req) {
			return nil, err
		}
		if !replayed {
			replayed = true
			l.pool.metrics.Retries.WithLabelValues(c.backend.Addr).Inc()
			_, err = l.route(req, failed)
			continue
		}
		_, err = l.again(ctx, st, req, failed, c.backend, deadline, err)
	}
}

// backendBroke reports whether a failed round trip is the backend's fault:
// not the client's (gone, a body that failed, a request HTTP/1.1 cannot
// carry), and not a reused connection that had died idle (errConnLost: the
// request goes again, and only a failure on a fresh one counts).
func backendBroke(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errClientBody) &&
		!errors.Is(err, ErrMalformedRequest) && !errors.Is(err, errConnLost) && !errors.Is(err, ErrLeaseClosed)
}

// errNoMoreTries ends a request's retries when Config.TryDuration is over.
var errNoMoreTries = errors.New("no more tries")

// again decides whether a request whose attempt on from failed with err goes
// again, and returns the backend of the next attempt: at once when the
// lease can move off from to a healthy backend this request has not failed
// on (one try per backend, whatever Config.TryDuration), after
// Config.TryInterval on the same backend while deadline allows. Otherwise
// it returns the error to fail the request with: err, or the context's
// error.
func (l *Lease) again(ctx context.Context, st *poolState, req *http.Request, failed []*Backend, from *Backend, deadline time.Time, err error) (*Backend, error) {
	retries := l.pool.metrics.Retries.WithLabelValues(from.Addr)
	if b, rerr := l.route(req, failed); rerr == nil && b != from {
		retries.Inc()
		return b, nil
	}
	if deadline.IsZero() || !time.Now().Before(deadline) {
		return nil, err
	}
	if perr := l.pause(ctx, st, deadline); perr != nil {
		if perr == errNoMoreTries {
			return nil, err
		}
		return nil, perr
	}
	retries.Inc()
	return l.route(req, failed)
}

// pause waits Config.TryInterval between attempts; it fails with
// errNoMoreTries when deadline (zero: no retries) comes first, or with the
// context's error.
func (l *Lease) pause(ctx context.Context, st *poolState, deadline time.Time) error {
	if deadline.IsZero() {
		return errNoMoreTries
	}
	d := min(st.cfg.TryInterval, time.Until(deadline))
	if d <= 0 {
		return errNoMoreTries
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
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
	dedicated := make([]*Dedicated, 0, len(l.dedicated))
	for d := range l.dedicated {
		dedicated = append(dedicated, d)
	}
	l.dialing += len(waiters) // each waiter wakes holding a slot and gives it back
	b := l.backend.Load()
	b.dropLease(l)
	l.mu.Unlock()

	for _, w := range waiters {
		w <- nil
	}
	for _, c := range conns {
		c.close(reasonSessionEnd)
	}
	for _, d := range dedicated {
		_ = d.Conn.Close()
		d.once.Do(func() { l.untrack(d, reasonSessionEnd) })
	}
	return nil
}

// growWait is how long a request waits, when every connection of its lease
// is busy and one of them is reading its response, for that connection to
// come free before it dials a new one. A response being read ends within
// microseconds to milliseconds on a busy machine; the client may have sent
// this request on its last byte, or cancelled the other request in a frame
// the proxy has not handled yet, and then it has no more requests in
// flight than connections. A client that really raises its concurrency
// pays the wait once per connection its session grows by.
const growWait = 5 * time.Millisecond

// probeAfter is how long a connection must have been idle before acquire
// checks that the backend has not closed it. A backend closes an idle
// keep-alive connection after seconds (its keep-alive timeout), and one it
// closes right after a response says so (Connection: close, never reused);
// a connection that finished a response a moment ago needs no system call
// to prove it is open, and a busy session reuses its connections every few
// microseconds.
const probeAfter = 50 * time.Millisecond

// acquire returns a connection reserved for one round trip, dialling with
// st's settings. It fails with errMoved when the lease's backend was
// removed (see Pool.Update): the request routes again.
func (l *Lease) acquire(ctx context.Context, st *poolState) (*conn, error) {
	for {
		c, err := l.reserve(ctx)
		if err != nil || c == nil {
			if err == nil {
				c, err = l.dial(ctx, st)
			}
			return c, err
		}
		if !c.used || l.pool.now().Sub(c.idleAt) < probeAfter || c.alive() {
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
	if l.backend.Load().removed.Load() {
		// An Update removed the backend since the request was routed: no
		// exchange starts there any more.
		l.mu.Unlock()
		return nil, errMoved
	}
	for _, c := range l.conns {
		if !c.busy {
			c.busy, c.ctx = true, ctx
			c.attachBuffers()
			if c.idleTimer != nil {
				c.idleTimer.Stop()
			}
			l.mu.Unlock()
			return c, nil
		}
	}
	// Dial only when every connection carries a request its client still
	// waits for. One whose client went away is free again soon: wait for it,
	// unless waiting requests have claimed every such connection already.
	bound := l.pool.state().cfg.MaxConnsPerSession
	below := len(l.conns)+l.dialing < bound
	unclaimed := l.finishingLocked() <= len(l.waiters)
	if below && unclaimed && !l.answeringLocked() {
		l.dialing++
		l.mu.Unlock()
		return nil, nil
	}
	w := make(chan *conn, 1)
	l.waiters = append(l.waiters, w)
	b := l.backend.Load()
	l.mu.Unlock()

	// A response already arriving may end in a moment, and its client may
	// have sent this request on its last byte, or have abandoned it in a
	// cancel the proxy has not seen yet: wait growWait for that connection
	// before growing the set.
	var grow <-chan time.Time
	waitInstead := below // of dialling: counted in ConnWaits
	if below && unclaimed {
		t := time.NewTimer(l.pool.growWait)
		defer t.Stop()
		grow = t.C
	}
	for waiting := true; waiting; {
		select {
		case c := <-w:
			if c != nil {
				l.mu.Lock()
				c.ctx = ctx
				l.mu.Unlock()
				if waitInstead {
					l.pool.metrics.ConnWaits.WithLabelValues(b.Addr, "reused").Inc()
				}
			}
			return c, nil
		case <-grow:
			grow = nil
			l.mu.Lock()
			i := slices.Index(l.waiters, w)
			if i >= 0 && len(l.conns)+l.dialing < l.pool.state().cfg.MaxConnsPerSession && l.finishingLocked() < len(l.waiters) {
				l.waiters = slices.Delete(l.waiters, i, i+1)
				l.dialing++
				l.mu.Unlock()
				l.pool.metrics.ConnWaits.WithLabelValues(b.Addr, "dialled").Inc()
				return nil, nil
			}
			l.mu.Unlock() // something is on its way to us, or the set is full: wait on
		case <-ctx.Done():
			waiting = false
		}
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

// dial opens a connection to the lease's backend in a slot that reserve
// granted, with st's settings. It fails with errMoved when the lease moved
// to another backend meanwhile, or its backend was removed: the request
// then routes again.
func (l *Lease) dial(ctx context.Context, st *poolState) (*conn, error) {
	l.mu.Lock()
	closed, b := l.closed, l.backend.Load()
	l.mu.Unlock()
	if closed {
		l.unreserve()
		return nil, ErrLeaseClosed
	}
	if b.removed.Load() {
		l.unreserve()
		return nil, errMoved
	}
	nc, err := b.dial(ctx, st, l.ticketCache(b))
	if err != nil {
		l.mu.Lock()
		l.dialing--
		if ctx.Err() == nil && l.backend.Load() == b {
			l.unreachable = true
		}
		l.grantLocked()
		l.mu.Unlock()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		l.pool.metrics.DialErrors.WithLabelValues(b.Addr).Inc()
		b.fail(failDial, "dial: "+err.Error())
		return nil, &DialError{Backend: b.Addr, Err: err, b: b}
	}

	l.mu.Lock()
	l.dialing--
	if l.closed {
		l.mu.Unlock()
		_ = nc.Close()
		return nil, ErrLeaseClosed
	}
	if l.backend.Load() != b {
		l.grantLocked()
		l.mu.Unlock()
		_ = nc.Close()
		return nil, errMoved
	}
	l.unreachable = false
	reason := "new"
	if len(l.conns) < l.peak {
		reason = "replace"
	}
	l.nextID++
	c := newConn(l, b, l.nextID, nc)
	c.busy, c.ctx = true, ctx
	l.conns = append(l.conns, c)
	l.peak = max(l.peak, len(l.conns))
	l.mu.Unlock()

	l.pool.metrics.ConnsOpened.WithLabelValues(b.Addr, reason).Inc()
	if ce := l.logger.Check(zap.DebugLevel, "upstream connection opened"); ce != nil {
		ce.Write(append(tlsFields(nc), zap.Uint64("session", l.sessionID), zap.Uint64("conn", c.id),
			zap.String("backend", b.Addr), zap.String("local", nc.LocalAddr().String()),
			zap.String("reason", reason))...)
	}
	return c, nil
}

// ticketCache returns the lease's TLS session cache, made at its first
// use, or nil when b does not speak TLS.
func (l *Lease) ticketCache(b *Backend) tls.ClientSessionCache {
	if b.tls == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tickets == nil {
		l.tickets = tls.NewLRUClientSessionCache(sessionTicketsPerLease)
	}
	return l.tickets
}

// tlsFields are the log fields of a new connection's TLS, if any: the
// version negotiated and whether it resumed an earlier connection's TLS
// session.
func tlsFields(nc net.Conn) []zap.Field {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return nil
	}
	cs := tc.ConnectionState()
	return []zap.Field{zap.String("tls", tls.VersionName(cs.Version)), zap.Bool("tls_resumed", cs.DidResume)}
}

// unreserve gives back a dial slot that produced no connection.
func (l *Lease) unreserve() {
	l.mu.Lock()
	l.dialing--
	l.grantLocked()
	l.mu.Unlock()
}

// grantLocked hands a free slot to the first waiter, if there is one that
// no finishing connection will serve, and reports whether it did.
func (l *Lease) grantLocked() bool {
	if l.closed || len(l.waiters) == 0 || len(l.conns)+l.dialing >= l.pool.state().cfg.MaxConnsPerSession ||
		len(l.waiters) <= l.finishingLocked() {
		return false
	}
	w := l.waiters[0]
	l.waiters = l.waiters[1:]
	l.dialing++
	w <- nil
	return true
}

// release ends a round trip on c: a reusable connection goes to the first
// waiter or back to idle; any other is closed for reason and its slot
// granted to a waiter. A connection to a backend the lease has left is
// closed ("moved"), and so is one to the lease's backend once an Update
// removed it; a request waiting then is woken to route again, which moves
// the lease (see drain).
func (l *Lease) release(c *conn, reuse bool, reason string) {
	l.mu.Lock()
	c.finishing, c.ctx = false, nil
	c.answered.Store(false)
	cur := l.backend.Load()
	// A connection to a backend the lease left, or to one an Update
	// removed, carries nothing more.
	leaving := c.backend == cur && cur.removed.Load() && !l.closed
	if reuse && (c.backend != cur || leaving) {
		reuse, reason = false, reasonMoved
	}
	if reuse && !l.closed {
		c.idleAt = l.pool.now()
		if len(l.waiters) > 0 {
			w := l.waiters[0]
			l.waiters = l.waiters[1:]
			l.mu.Unlock()
			w <- c // stays busy: it changes hands
			return
		}
		c.busy = false
		c.detachBuffers()
		if idle := l.pool.state().cfg.KeepaliveIdle; idle > 0 {
			if c.idleTimer == nil {
				c.idleTimer = time.AfterFunc(idle, func() { l.expire(c) })
			} else {
				c.idleTimer.Reset(idle)
			}
		}
		l.mu.Unlock()
		return
	}
	if i := slices.Index(l.conns, c); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
	}
	if leaving {
		l.wakeLocked()
	} else {
		l.grantLocked()
	}
	l.mu.Unlock()
	if reason == "" {
		reason = reasonSessionEnd
	}
	c.close(reason)
}

// clientGone notes that c's round trip is no request's any more (its client
// went away, or the proxy stopped reading its response): c is busy only
// until the exchange is finished.
func (l *Lease) clientGone(c *conn) {
	l.mu.Lock()
	c.finishing = true
	l.mu.Unlock()
}

// answeringLocked reports whether a busy connection is reading its
// response's body for a request still in flight.
func (l *Lease) answeringLocked() bool {
	for _, c := range l.conns {
		if c.busy && !c.finishing && c.answered.Load() {
			return true
		}
	}
	return false
}

// finishingLocked counts the busy connections whose request is over for its
// client: marked by clientGone, or with a context that ended (the client's
// cancel is seen by the request's context before the watch on it runs, and
// its next request may come between the two). Each is free again in at
// most drainTimeout, so a request waits for one rather than dialling.
func (l *Lease) finishingLocked() int {
	n := 0
	for _, c := range l.conns {
		if c.busy && (c.finishing || c.ctx != nil && c.ctx.Err() != nil) {
			n++
		}
	}
	return n
}

// expire closes c when it has been idle for Config.KeepaliveIdle. A timer
// that fired as c was taken (or taken and idle again since) finds it busy or
// idle too briefly and leaves it alone; one armed before an Update raised
// the limit waits out the rest, and one that found the limit turned off
// (zero) keeps c.
func (l *Lease) expire(c *conn) {
	l.mu.Lock()
	i := slices.Index(l.conns, c)
	idle := l.pool.state().cfg.KeepaliveIdle
	if l.closed || i < 0 || c.busy || idle == 0 {
		l.mu.Unlock()
		return
	}
	if left := idle - l.pool.now().Sub(c.idleAt); left > 0 {
		c.idleTimer.Reset(left)
		l.mu.Unlock()
		return
	}
	l.conns = slices.Delete(l.conns, i, i+1)
	l.peak-- // the next dial grows the set anew; it replaces nothing broken
	l.mu.Unlock()
	c.close(reasonIdle)
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
