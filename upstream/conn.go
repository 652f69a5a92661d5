package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Reasons a connection closed, the "reason" label of ConnsClosed.
const (
	reasonSessionEnd    = "session_end"
	reasonBackendClosed = "backend_closed"
	reasonError         = "error"
	reasonAborted       = "aborted"
	reasonMoved         = "moved"
	reasonIdle          = "idle"
)

// errConnLost marks a failure on a reused connection before any byte of a
// response arrived: the backend had closed it. Such requests may be retried.
var errConnLost = errors.New("upstream connection lost before response")

// errClientBody marks a failure reading the client's request body: the
// client's doing (it went away, or sent a malformed body or trailer), not
// the backend's.
var errClientBody = errors.New("read request body")

// drainLimit and drainTimeout bound how much of an unread response body is
// read to keep its connection when the client goes away mid-response.
const (
	drainLimit   = 256 << 10
	drainTimeout = 500 * time.Millisecond
)

var aLongTimeAgo = time.Unix(1, 0)

// conn is one upstream HTTP/1.1 keep-alive connection of a lease.
type conn struct {
	lease   *Lease
	backend *Backend // the lease's backend when it was dialled
	id      uint64
	nc      net.Conn
	br      *bufio.Reader // reads through conn.Read, which counts bytes
	bw      *bufio.Writer
	probe   prober    // liveness check of an idle connection
	co      coalescer // request bodies on their way upstream, one at a time

	// Guarded by lease.mu:
	busy      bool            // reserved for a round trip
	finishing bool            // busy, but its request is over (see Lease.clientGone)
	ctx       context.Context // the context of the request it carries; nil when idle
	idleAt    time.Time       // when it last became idle
	idleTimer *time.Timer     // closes it after Config.KeepaliveIdle idle; nil without
	// Owned by the goroutine holding the reservation:
	used  bool  // has carried a request, so a reuse checks liveness first
	nread int64 // bytes read from nc

	// readingBody is set while the body writer waits on the client's body
	// (as opposed to writing upstream): a response that ends then leaves a
	// request that may never finish.
	readingBody atomic.Bool
	// answered is set once the response header of the current round trip
	// is in, until the connection is released.
	answered atomic.Bool
	// writing is set while a request body writer runs: a client that goes
	// away then leaves an incomplete request, which only closing ends.
	writing atomic.Bool
	// watching counts a round trip's armed watch until it is stopped or
	// has run, so the end of a round trip can wait for a watch that fired.
	watching sync.WaitGroup

	mu       sync.Mutex // guards the following
	abortErr error      // why the current round trip was aborted
	// leftErr is set when the client went away after its request was sent
	// whole: the response is still read, by leftBy, and discarded, so the
	// backend sees its request answered and the connection is kept.
	leftErr error
	leftBy  time.Time
	closed  bool
	// leaving mirrors leftErr != nil for the body's reads, without the lock.
	leaving atomic.Bool
}

func newConn(l *Lease, b *Backend, id uint64, nc net.Conn) *conn {
	c := &conn{lease: l, backend: b, id: id, nc: nc}
	c.attachBuffers()
	c.probe.init(nc)
	return c
}

// An idle connection holds no buffers: a session keeps its upstream
// connections for its whole life, mostly idle (a phone between requests),
// and 8 KiB of bufio per idle connection was a tenth of what an idle
// session costs. They come from pools when a request takes the connection
// and go back when it is idle again with nothing buffered.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReader(nil) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriter(nil) }}
)

// attachBuffers gives the connection its buffers unless it has them. The
// lease's mutex or sole ownership (a new or reserved connection) guards it.
func (c *conn) attachBuffers() {
	if c.br == nil {
		c.br = readerPool.Get().(*bufio.Reader)
		c.br.Reset(c)
	}
	if c.bw == nil {
		c.bw = writerPool.Get().(*bufio.Writer)
		c.bw.Reset(c.nc)
	}
}

// detachBuffers returns the buffers of a connection going idle to the
// pools, unless something is buffered (unsolicited bytes from the backend,
// which make the connection unusable and must stay visible to alive). Only
// the lease calls it, under its mutex, once the round trip's body is done
// with them.
func (c *conn) detachBuffers() {
	if c.br == nil || c.br.Buffered() > 0 || c.bw.Buffered() > 0 {
		return
	}
	c.br.Reset(nil)
	readerPool.Put(c.br)
	c.bw.Reset(nil)
	writerPool.Put(c.bw)
	c.br, c.bw = nil, nil
}

// Read reads from the network connection and counts, so a failure can tell
// whether any of the response arrived.
func (c *conn) Read(p []byte) (int, error) {
	n, err := c.nc.Read(p)
	c.nread += int64(n)
	return n, err
}

// alive reports whether an idle connection can carry a request: nothing
// unsolicited is buffered and the backend has not closed it.
func (c *conn) alive() bool {
	return (c.br == nil || c.br.Buffered() == 0) && c.probe.aliveNow()
}

func (c *conn) close(reason string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	// After an error or an abort a write may be stuck on a backend that
	// stopped reading: no close_notify then.
	_ = closeConn(c.nc, reason != reasonError && reason != reasonAborted)
	l := c.lease
	l.mu.Lock()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	l.mu.Unlock()
	l.pool.metrics.ConnsClosed.WithLabelValues(c.backend.Addr, reason).Inc()
	if ce := l.logger.Check(zap.DebugLevel, "upstream connection closed"); ce != nil {
		ce.Write(zap.Uint64("session", l.sessionID), zap.Uint64("conn", c.id),
			zap.String("backend", c.backend.Addr), zap.String("reason", reason))
	}
}

// abort makes every pending read and write on the connection fail at once.
func (c *conn) abort(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.abortErr == nil {
		c.abortErr = err
	}
	_ = c.nc.SetDeadline(aLongTimeAgo)
}

// clientLeft handles the end of the client's context during a round trip
// (the watch). While the request body is still being written the request
// can never be completed: the round trip is aborted. Once it is sent whole,
// the backend is given drainTimeout to finish its answer, which is read
// and discarded; the connection then carries the session's next request
// instead of being replaced (a legacy backend keeps its per-connection
// state through a client's cancel).
func (c *conn) clientLeft(err error) {
	if c.writing.Load() {
		c.abort(err)
		return
	}
	c.mu.Lock()
	if c.abortErr != nil || c.leftErr != nil {
		c.mu.Unlock()
		return
	}
	c.leftErr = err
	c.leaving.Store(true)
	c.leftBy = time.Now().Add(drainTimeout)
	_ = c.nc.SetReadDeadline(c.leftBy)
	c.mu.Unlock()
	c.lease.clientGone(c)
}

// left returns the client's error once it went away mid-exchange.
func (c *conn) left() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leftErr
}

// rejoin readies a connection whose client had gone away for its next round
// trip, once that exchange ended cleanly.
func (c *conn) rejoin() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leftErr != nil {
		c.leftErr, c.leftBy = nil, time.Time{}
		c.leaving.Store(false)
		_ = c.nc.SetReadDeadline(time.Time{})
	}
}

// setReadDeadline sets a read deadline unless the round trip was aborted
// (whose deadline in the past must stay); once the client has gone, no
// later than the exchange may take.
func (c *conn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.abortErr != nil {
		return
	}
	if c.leftErr != nil && (t.IsZero() || t.After(c.leftBy)) {
		t = c.leftBy
	}
	_ = c.nc.SetReadDeadline(t)
}

func (c *conn) aborted() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.abortErr
}

// abortArmDelay is how long a round trip waits for its answer before it
// watches the client's context. Most backends answer within it, and a round
// trip whose whole response arrives in time needs no watch at all: a
// context.AfterFunc costs a few µs and ~750 bytes (it gives the request's
// context its map of children), on every request. A client that goes away
// is still noticed, at most this late: the watch armed late fires at once
// on a done context.
const abortArmDelay = 50 * time.Millisecond

// roundTrip writes req and reads the response header, within st's
// ResponseHeaderTimeout. On error the connection has been released
// (closed); on success it stays reserved until the response body ends.
func (c *conn) roundTrip(st *poolState, req *http.Request) (*http.Response, error) {
	reused := c.used
	c.used = true
	startRead := c.nread
	ctx := req.Context()
	w := watch{c: c, ctx: ctx}

	hasBody := req.Body != nil && req.Body != http.NoBody
	chunked := hasBody && req.ContentLength < 0
	var wdone chan error
	err := writeRequestHeader(c.bw, req, hasBody, chunked)
	if err == nil {
		if hasBody {
			// A request body can take any time, and its writer's reads of the
			// client must end when the client goes away: watch from the start.
			w.arm()
			// The body is written concurrently with reading the response:
			// a backend may answer (and stop reading) before the body ends,
			// and a streaming body must not wait for the response.
			wdone = make(chan error, 1)
			c.writing.Store(true)
			go func() {
				err := c.writeBody(req, chunked)
				c.writing.Store(false)
				if err != nil {
					// The request cannot be completed: fail the response read
					// too, with the writer's reason.
					c.abort(err)
				}
				wdone <- err
			}()
		} else {
			err = c.bw.Flush()
		}
	}

	var resp *http.Response
	if err == nil {
		resp, err = c.awaitResponse(req, &w, st.cfg.ResponseHeaderTimeout)
	}
	if err != nil {
		w.stop()
		c.abandonWrite(req, wdone)
		err = c.classify(err, reused && c.nread == startRead)
		reason := reasonError
		switch {
		case errors.Is(err, errConnLost):
			reason = reasonBackendClosed
		case ctx.Err() != nil, errors.Is(err, errClientBody), errors.Is(err, ErrMalformedRequest):
			reason = reasonAborted // the client's doing
		}
		if wdone == nil {
			closeBody(req)
		}
		c.lease.release(c, false, reason)
		return nil, err
	}
	c.answered.Store(true)
	b := &body{c: c, rc: resp.Body, req: req, wdone: wdone, w: w, connClose: resp.Close}
	if ctx.Err() != nil {
		// The client went away as the answer came: finish the exchange
		// (Close reads and discards the rest) and keep the connection.
		_ = b.Close()
		return nil, context.Cause(ctx)
	}
	resp.Body = b
	return resp, nil
}

// awaitResponse reads the response header within timeout (zero: no
// limit). Unless w is armed already, it first waits the pool's arming delay
// (abortArmDelay) unwatched, and arms w only when the answer takes longer
// or its body is not all here.
func (c *conn) awaitResponse(req *http.Request, w *watch, timeout time.Duration) (*http.Response, error) {
	now := time.Now()
	var deadline time.Time // zero: none
	if t := timeout; t > 0 {
		deadline = now.Add(t)
	}
	if !w.armed() {
		// Wait unwatched until the arming delay or the header timeout,
		// whichever comes first: a request that times out needs no watch.
		first := now.Add(c.lease.pool.armDelay)
		if !deadline.IsZero() && deadline.Before(first) {
			first = deadline
		}
		c.setReadDeadline(first)
		_, err := c.br.Peek(1)
		if err != nil && (first.Equal(deadline) || !errors.Is(err, os.ErrDeadlineExceeded)) {
			return nil, err
		}
		if err != nil || !headerBuffered(c.br) {
			// Slow, or a header in several segments: from here on the
			// wait is the request's real one.
			w.arm()
			c.setReadDeadline(deadline)
		}
	} else if !deadline.IsZero() {
		c.setReadDeadline(deadline)
	}
	resp, err := readFinalResponse(c.br, req, func() {
		// The final response may take long after an interim one.
		if !w.armed() {
			w.arm()
			c.setReadDeadline(deadline)
		}
	})
	c.setReadDeadline(time.Time{})
	if err == nil && !w.armed() && !bodyBuffered(c.br, resp) {
		w.arm() // the body streams on: the client may leave meanwhile
	}
	return resp, err
}

// headerBuffered reports whether br holds a whole response header.
func headerBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf)
}

var crlfcrlf = []byte("\r\n\r\n")

// bodyBuffered reports whether resp has no body or its whole body (of
// known length) is in br.
func bodyBuffered(br *bufio.Reader, resp *http.Response) bool {
	return resp.Body == http.NoBody || resp.ContentLength >= 0 && int64(br.Buffered()) >= resp.ContentLength
}

// watch aborts a round trip's connection when the client's context ends,
// once armed (context.AfterFunc).
type watch struct {
	c      *conn
	ctx    context.Context
	stopFn func() bool
}

func (w *watch) armed() bool { return w.stopFn != nil }

func (w *watch) arm() {
	if w.stopFn == nil {
		c, ctx := w.c, w.ctx
		c.watching.Add(1)
		w.stopFn = context.AfterFunc(ctx, func() {
			defer c.watching.Done()
			c.clientLeft(context.Cause(ctx))
		})
	}
}

// stop disarms the watch and reports whether it had not fired (an unarmed
// watch never fires). A watch that fired has done its work when stop
// returns.
func (w *watch) stop() bool {
	if w.stopFn == nil {
		return true
	}
	stopped := w.stopFn()
	w.stopFn = nil
	if stopped {
		w.c.watching.Done()
	} else {
		w.c.watching.Wait()
	}
	return stopped
}

// classify turns a round-trip error into the one the caller acts on.
func (c *conn) classify(err error, nothingReceived bool) error {
	if aerr := c.aborted(); aerr != nil {
		return aerr
	}
	if lerr := c.left(); lerr != nil {
		return lerr
	}
	backend := c.backend.Addr
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("upstream %s: %w", backend, ErrResponseHeaderTimeout)
	}
	if nothingReceived {
		return fmt.Errorf("upstream %s: %w: %w", backend, errConnLost, err)
	}
	return fmt.Errorf("upstream %s: %w", backend, err)
}

// abandonWrite stops a body writer that is still running and waits for it:
// the connection is closed so writes fail, and the client body is closed so
// a read blocked on the client returns.
func (c *conn) abandonWrite(req *http.Request, wdone chan error) {
	if wdone == nil {
		return
	}
	select {
	case <-wdone:
		return
	default:
	}
	_ = closeConn(c.nc, false) // the writer may be stuck in a write
	closeBody(req)
	<-wdone
}

// writeBody copies the request body upstream through a coalescer (large
// writes for a bulk upload, a trickle still flows within coalesceDelay),
// then closes it.
func (c *conn) writeBody(req *http.Request, chunked bool) (err error) {
	defer func() {
		if cerr := req.Body.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp

	co := &c.co
	co.start(c.bw)
	defer func() {
		if err != nil {
			// Send what arrived before the failure, as it came: the
			// backend sees an incomplete request (the connection is closed
			// next), never a complete-looking one.
			_ = co.finish()
			_ = c.bw.Flush()
		}
	}()
	var dst io.Writer = co
	var cw io.WriteCloser
	if chunked {
		cw = newChunkedWriter(co)
		dst = cw
	}
	var written int64
	for chunked || written < req.ContentLength {
		c.readingBody.Store(true)
		n, rerr := req.Body.Read(buf)
		c.readingBody.Store(false)
		if n > 0 {
			if !chunked && written+int64(n) > req.ContentLength {
				return fmt.Errorf("%w: body longer than its Content-Length %d", ErrMalformedRequest, req.ContentLength)
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return err
			}
			written += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("%w: %w", errClientBody, rerr)
		}
	}
	if !chunked && written != req.ContentLength {
		// Read no further than Content-Length: the request is complete
		// (the client's protocol layer enforces the length).
		return fmt.Errorf("%w: body of %d bytes shorter than its Content-Length %d: %w", ErrMalformedRequest, written, req.ContentLength, io.ErrUnexpectedEOF)
	}
	if chunked {
		if err := cw.Close(); err != nil {
			return err
		}
	}
	if err := co.finish(); err != nil {
		return err
	}
	if chunked {
		if err := writeTrailer(c.bw, req.Trailer); err != nil {
			return err
		}
	}
	return c.bw.Flush()
}

// writeGrace bounds the wait for a body writer that is still writing
// upstream when the response ends: normally the last flush of a complete
// body, done in microseconds; longer means the backend stopped reading.
const writeGrace = time.Second

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// body is a response body streaming from a lease's connection. When it ends
// cleanly (EOF, the backend keeps the connection, the request body was fully
// written) the connection goes back to the lease.
type body struct {
	c         *conn
	rc        io.ReadCloser
	req       *http.Request
	wdone     chan error
	w         watch // the round trip's watch on the client's context
	connClose bool  // the backend said Connection: close
	done      bool
	err       error // returned after done
}

// Read reads the response body.
func (b *body) Read(p []byte) (int, error) {
	if b.done {
		return 0, b.err
	}
	if b.c.leaving.Load() {
		// The client went away: nobody reads on. Finish the exchange.
		lerr := b.c.left()
		_ = b.Close()
		b.err = lerr
		return 0, lerr
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
		b.err = io.EOF
	case err != nil:
		if aerr := b.c.aborted(); aerr != nil {
			err = aerr
		} else if lerr := b.c.left(); lerr != nil {
			err = lerr
		}
		b.finish(false)
		b.err = err
	}
	return n, b.errIfDone(err)
}

func (b *body) errIfDone(err error) error {
	if b.done {
		return b.err
	}
	return err
}

// Buffered reports how many body bytes can be read without waiting on the
// network (an upper bound: framing bytes count too). The proxy flushes its
// client only when this is zero, so bursts go out together and a trickle
// (server-sent events) goes out at once.
func (b *body) Buffered() int {
	if b.done {
		return 0
	}
	return b.c.br.Buffered()
}

// Close ends the body. An unread rest is drained (within drainLimit and
// drainTimeout) to keep the connection; otherwise the connection is closed.
// Meanwhile the connection is no request's: one that needs a connection
// waits for it rather than dialling.
func (b *body) Close() error {
	if b.done {
		return nil
	}
	b.c.lease.clientGone(b.c)
	if b.c.aborted() == nil && b.c.drain(b.rc) {
		b.finish(true)
	} else {
		b.finish(false)
	}
	b.err = errors.New("read on closed response body")
	return nil
}

// finish releases the connection once the response is over.
func (b *body) finish(clean bool) {
	b.done = true
	reuse := clean && !b.connClose && !b.req.Close
	b.w.stop()
	if b.c.aborted() != nil {
		reuse = false // its deadline in the past poisons the connection
	}
	if b.wdone != nil {
		select {
		case err := <-b.wdone:
			if err != nil {
				reuse = false
			}
		default:
			if !b.c.readingBody.Load() {
				// Most likely the writer is finishing its last write.
				if done, err := b.waitWriter(); done {
					reuse = reuse && err == nil
					break
				}
			}
			// The backend answered before the request body was written:
			// the connection cannot carry another request.
			reuse = false
			b.c.abandonWrite(b.req, b.wdone)
		}
	} else {
		closeBody(b.req)
	}
	if reuse {
		b.c.rejoin()
	}
	reason := reasonError
	switch {
	case clean && (b.connClose || b.req.Close):
		reason = reasonBackendClosed
	case b.c.aborted() != nil || b.c.left() != nil:
		reason = reasonAborted
	}
	b.c.lease.release(b.c, reuse, reason)
}

// waitWriter waits up to writeGrace for the body writer: done reports
// whether it finished, err how.
func (b *body) waitWriter() (done bool, err error) {
	t := time.NewTimer(writeGrace)
	defer t.Stop()
	select {
	case err := <-b.wdone:
		return true, err
	case <-t.C:
		return false, nil
	}
}

// drain reads and discards the rest of a response body so its connection can
// be reused, and reports whether it reached the end in bounds.
func (c *conn) drain(rc io.Reader) bool {
	c.setReadDeadline(time.Now().Add(drainTimeout))
	n, err := io.CopyN(io.Discard, rc, drainLimit+1)
	c.setReadDeadline(time.Time{})
	return err == io.EOF && n <= drainLimit
}
