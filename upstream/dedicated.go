package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Dedicated is a session's upstream connection that carries one exchange
// only and then belongs to it: an upgraded connection (WebSocket), never
// one of the lease's shared keep-alive connections. It is still the
// session's: the lease's Close closes it.
type Dedicated struct {
	net.Conn
	r       *bufio.Reader // bytes the backend sent after the 101's header come first
	lease   *Lease
	backend string
	once    sync.Once
}

// Read reads from the connection, starting with what followed the response
// header.
func (d *Dedicated) Read(p []byte) (int, error) { return d.r.Read(p) }

// CloseWrite half-closes the connection: a FIN to the backend, after a
// close_notify over TLS (RFC 8446 §6.1: the alert ends the sender's side
// only).
func (d *Dedicated) CloseWrite() error {
	nc := d.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		nc = tc.NetConn()
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		return tc.CloseWrite()
	}
	return nil
}

// Close closes the connection and forgets it.
func (d *Dedicated) Close() error {
	err := d.Conn.Close()
	d.once.Do(func() { d.lease.untrack(d, "done") })
	return err
}

// Upgrade sends req, an HTTP/1.1 upgrade request (the caller has set
// Connection: Upgrade and Upgrade), on a new dedicated connection to the
// lease's backend (moving the lease first when its backend is unhealthy,
// as RoundTrip does) and reads the response header. For a 101 Switching
// Protocols the caller gets the connection and owns it until it closes it
// (or the lease closes). For any other status the response body reads from
// the connection, which closes with the body.
func (l *Lease) Upgrade(req *http.Request) (*http.Response, *Dedicated, error) {
	ctx := req.Context()
	st := l.pool.state()
	b, err := l.route(req, nil)
	if err != nil {
		return nil, nil, err
	}
	nc, err := b.dial(ctx, st, l.ticketCache(b))
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		l.pool.metrics.DialErrors.WithLabelValues(b.Addr).Inc()
		b.fail(failDial, "dial: "+err.Error())
		l.mu.Lock()
		if l.backend.Load() == b {
			l.unreachable = true
		}
		l.mu.Unlock()
		return nil, nil, &DialError{Backend: b.Addr, Err: err, b: b}
	}
	d := &Dedicated{Conn: nc, r: bufio.NewReader(nc), lease: l, backend: b.Addr}
	if err := l.track(d); err != nil {
		_ = nc.Close()
		return nil, nil, err
	}

	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(aLongTimeAgo) })
	defer stop()
	bw := bufio.NewWriter(nc)
	if err = writeRequestHeader(bw, req, false, false); err == nil {
		err = bw.Flush()
	}
	var resp *http.Response
	if err == nil {
		if t := st.cfg.ResponseHeaderTimeout; t > 0 {
			_ = nc.SetReadDeadline(time.Now().Add(t))
		}
		resp, err = readFinalResponse(d.r, req, nil)
		_ = nc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		_ = d.Close()
		switch {
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			b.fail(failHeaderTimeout, "response header timeout")
			return nil, nil, fmt.Errorf("upstream %s: %w", b.Addr, ErrResponseHeaderTimeout)
		}
		return nil, nil, fmt.Errorf("upstream %s: %w", b.Addr, err)
	}
	b.failStatus(resp.StatusCode)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body = &closeWith{ReadCloser: resp.Body, close: d.Close}
		return resp, nil, nil
	}
	return resp, d, nil
}

// readFinalResponse reads a response header, skipping 1xx informational
// responses other than 101; onInterim, unless nil, runs after each one. A
// header with a field HTTP cannot carry is an ErrMalformedResponse.
func readFinalResponse(br *bufio.Reader, req *http.Request, onInterim func()) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if err := CheckFields("header", resp.Header); err != nil {
			return nil, err // the caller closes the connection
		}
		if !informational(resp.StatusCode) {
			return resp, nil
		}
		if onInterim != nil {
			onInterim()
		}
	}
}

// informational reports whether a status is a 1xx response other than 101,
// which a proxy reads past (RFC 9110 §15.2).
func informational(code int) bool {
	return code >= 100 && code < 200 && code != http.StatusSwitchingProtocols
}

// closeWith is a body whose Close also runs close.
type closeWith struct {
	io.ReadCloser
	close func() error
}

func (c *closeWith) Close() error {
	err := c.ReadCloser.Close()
	if cerr := c.close(); err == nil {
		err = cerr
	}
	return err
}

// track adds a dedicated connection to the lease, so that Close closes it.
func (l *Lease) track(d *Dedicated) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrLeaseClosed
	}
	if l.dedicated == nil {
		l.dedicated = make(map[*Dedicated]struct{})
	}
	l.dedicated[d] = struct{}{}
	l.pool.metrics.ConnsOpened.WithLabelValues(d.backend, "dedicated").Inc()
	if ce := l.logger.Check(zap.DebugLevel, "dedicated upstream connection opened"); ce != nil {
		ce.Write(append(tlsFields(d.Conn), zap.Uint64("session", l.sessionID), zap.String("backend", d.backend),
			zap.String("local", d.LocalAddr().String()))...)
	}
	return nil
}

// untrack forgets a dedicated connection that closed for reason.
func (l *Lease) untrack(d *Dedicated, reason string) {
	l.mu.Lock()
	_, ok := l.dedicated[d]
	delete(l.dedicated, d)
	l.mu.Unlock()
	if ok {
		l.pool.metrics.ConnsClosed.WithLabelValues(d.backend, "dedicated_"+reason).Inc()
	}
}
