package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/upstream"
)

// statusClientClosed is logged (never sent) when the client went away before
// its response: nginx's 499.
const statusClientClosed = 499

// handler serves the requests of one port, HTTP/3 and TCP alike.
type handler struct {
	srv    *Server
	router *atomic.Pointer[router] // the port's, swapped by Reload
	altSvc []string                // Alt-Svc for TCP responses; nil on HTTP/3
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	growStack()
	start := time.Now()
	s := sessionFrom(r.Context())
	if s == nil {
		// Every listener of ours attaches a session; a request without one
		// is a wiring bug, not the client's fault.
		http.Error(w, "no session", http.StatusInternalServerError)
		return
	}
	s.observePath()
	if h.altSvc != nil {
		w.Header()["Alt-Svc"] = h.altSvc
	}
	st := h.router.Load().match(r.Host)
	rec := exchange{status: http.StatusMisdirectedRequest}
	defer func() {
		s.observePath() // a long request (a stream) may have seen the path change
		d := time.Since(start)
		sm := h.srv.metrics.noSite
		if st != nil {
			sm = st.metrics
		}
		sm.request(s.proto, rec.status, d, rec.stream)
		h.log(r, s, &rec, d)
	}()
	if st == nil {
		// RFC 9110 §15.5.20: this connection is not authoritative for the
		// host; a client may retry on another connection. Never another
		// site's content.
		rec.httpError(w, "misdirected request: no site for this host", http.StatusMisdirectedRequest)
		return
	}
	if !h.checkHead(w, r, s, st, &rec) {
		return
	}
	if len(st.clientCAs) > 0 {
		if err := h.srv.verifyClientCert(st.clientCAs, r.TLS); err != nil {
			h.refuseClientCert(w, r, s, &rec, err)
			return
		}
	}
	// RFC 8470: a request that arrived in 0-RTT data may be a replay of an
	// earlier flight. Only safe methods go on (marked Early-Data: 1); any
	// other waits for the client to retry after the handshake.
	early := r.TLS != nil && !r.TLS.HandshakeComplete
	if early && !safeMethod(r.Method) {
		h.refuseEarly(w, r, s, &rec)
		return
	}
	switch {
	case r.Method == http.MethodConnect && !isExtendedConnect(r):
		h.tunnel(w, r, s, st, &rec)
		return
	case isExtendedConnect(r) && r.Proto != "websocket":
		// quic-go always advertises extended CONNECT (RFC 9220
		// SETTINGS_ENABLE_CONNECT_PROTOCOL); roamgate only speaks WebSocket.
		rec.httpError(w, "unsupported :protocol", http.StatusNotImplemented)
		return
	}
	rt := st.routeFor(r)
	if rt == nil {
		st.headers.apply(w.Header(), r, "")
		rec.httpError(w, "not found", http.StatusNotFound)
		return
	}
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		// net/http drops a Content-Length sent along with Transfer-Encoding
		// and reads the body chunked, as RFC 9112 §6.3 allows, but keeps the
		// connection open. The RFC wants it closed after the response: a
		// request both framings describe is a smuggling attempt, and what
		// follows it on the connection must not be read as a request.
		w.Header().Set("Connection", "close")
	}
	switch {
	case rt.proxy != nil && (isExtendedConnect(r) || isWebSocketUpgrade(r)):
		h.websocket(w, r, s, st, rt, &rec)
	case rt.proxy != nil:
		h.reverseProxy(w, r, s, st, rt, early, &rec)
	case rt.respond != nil:
		rt.headers.apply(w.Header(), r, "")
		st.headers.apply(w.Header(), r, "")
		rec.status, rec.written = rt.respond.serve(w, r)
	case rt.redir != nil:
		rt.headers.apply(w.Header(), r, "")
		st.headers.apply(w.Header(), r, "")
		rec.status = rt.redir.serve(w, r)
	}
}

// growStack grows the request's goroutine stack to the size the request
// path needs, once, while the stack is shallow. http3 (and net/http) serve
// each request on a new goroutine whose stack starts small; the path to the
// backend and back (the handler, the upstream round trip, the socket calls)
// is deeper than that, so the runtime would grow the stack half way down,
// copying every frame above it and adjusting each one's pointers: several
// µs per request in the CPU profile. Growing it here copies only http3's
// few frames. (CockroachDB's util/growstack does the same.)
//
//go:noinline
func growStack() {
	var buf [4 << 10]byte
	stackSink(buf[:])
}

//go:noinline
func stackSink([]byte) {}

// The cold paths below are functions of their own, never inlined, so their
// log fields stay out of the request path's stack frames: each request runs
// on a new goroutine that starts with a small stack, and large frames on the
// way to the backend make it grow (a copy of the whole stack) on every
// request.

//go:noinline
func (h *handler) refuseClientCert(w http.ResponseWriter, r *http.Request, s *session, rec *exchange, err error) {
	// The handshake verified a certificate for the server name it named;
	// this request names a site that wants one of its own CAs.
	rec.err = err
	h.srv.errLog.get().Info("client certificate refused", zap.Uint64("session", s.id),
		zap.String("host", r.Host), zap.Error(err))
	rec.httpError(w, "client certificate required", http.StatusForbidden)
}

//go:noinline
func (h *handler) refuseEarly(w http.ResponseWriter, r *http.Request, s *session, rec *exchange) {
	rec.status = http.StatusTooEarly
	h.srv.metrics.tooEarly.Inc()
	if ce := h.srv.logger.Check(zap.InfoLevel, "early request refused"); ce != nil {
		ce.Write(zap.Uint64("session", s.id), zap.String("method", r.Method), zap.String("uri", r.RequestURI))
	}
	w.WriteHeader(http.StatusTooEarly)
}

// bodyFailed ends a response whose body could not be copied: quietly when
// the client went away (closing the body frees the upstream connection),
// else by resetting the client's stream, so it sees a truncated response,
// never a complete-looking one.
//
//go:noinline
func (h *handler) bodyFailed(r *http.Request, s *session, rec *exchange, err error) {
	rec.err = err
	if errors.Is(err, errClientWrite) || r.Context().Err() != nil {
		return
	}
	h.srv.errLog.get().Warn("upstream response body failed",
		zap.Uint64("session", s.id), zap.String("backend", rec.backend),
		zap.String("uri", r.RequestURI), zap.Int64("written", rec.written), zap.Error(err))
	panic(http.ErrAbortHandler)
}

// verifyClientCert checks a request's TLS state against a site's client CAs.
func (srv *Server) verifyClientCert(caFiles []string, cs *tls.ConnectionState) error {
	if v, ok := srv.certs.(ClientCertVerifier); ok {
		return v.VerifyClientCert(caFiles, cs)
	}
	if cs == nil || len(cs.VerifiedChains) == 0 {
		return errors.New("client certificate required")
	}
	return nil
}

// safeMethod reports whether a method is safe to process from 0-RTT data
// (RFC 8470 §3, RFC 9110 §9.2.1).
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// exchange is what the access log records about one request.
type exchange struct {
	status        int
	written       int64 // body bytes to the client, whoever wrote them: the backend's or the proxy's own
	upstreamBytes int64 // bytes to the backend, for streams (WebSocket, tunnel)
	stream        bool  // a WebSocket or tunnel: its time is the stream's life, not a request's
	backend       string
	err           error
}

// httpError answers the request with status and msg as http.Error does, and
// records both, so the access log counts the bytes of the proxy's own
// answers too (a 502 logged "bytes": 0 while its body was sent: issue 13).
func (rec *exchange) httpError(w http.ResponseWriter, msg string, status int) {
	rec.status = status
	h := w.Header()
	delete(h, "Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	n, _ := io.WriteString(w, msg+"\n")
	rec.written += int64(n)
}

// reverseProxy forwards a request over the session's lease on the route's
// pool and streams the response back.
func (h *handler) reverseProxy(w http.ResponseWriter, r *http.Request, s *session, st *site, rt *route, early bool, rec *exchange) {
	lease, err := s.lease(rt.proxy.pool, r)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	backend := lease.Backend().Addr
	rec.backend = backend
	target := ""
	if rt.strip != "" {
		target = stripTarget(r, rt.strip)
	}
	o := getOutgoing()
	defer o.release() // after the response body is closed (deferred below): the exchange is over
	out, err := outRequest(o, w, r, s, target, early)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	rt.proxy.headerUp.apply(out.Header, r, backend)
	if host, ok := out.Header["Host"]; ok {
		// header_up Host: the Host header goes upstream as out.Host.
		if len(host) > 0 {
			out.Host = host[0]
		}
		delete(out.Header, "Host")
	}
	resp, err := lease.RoundTrip(out)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	defer resp.Body.Close()
	rec.backend = lease.Backend().Addr // the session may have moved

	hdr := w.Header()
	copyResponseHeader(hdr, resp.Header)
	rt.proxy.headerDown.apply(hdr, r, rec.backend)
	if c := lease.Cookie(r); c != nil {
		hdr.Add("Set-Cookie", c.String()) // lb_policy cookie: where this client's sessions go
	}
	rt.headers.apply(hdr, r, "")
	st.headers.apply(hdr, r, "")
	if _, ok := hdr["Content-Type"]; !ok {
		hdr["Content-Type"] = nil // a proxy never sniffs one
	}
	if len(resp.Trailer) > 0 {
		announceTrailers(hdr, resp.Trailer)
	}
	rec.status = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	n, err := copyBody(w, resp)
	rec.written = n
	if err == nil {
		// A trailer HTTP cannot carry cuts the response: the client's
		// stack would refuse it whole, or, dropped, the response would
		// look complete without it.
		err = upstream.CheckFields("trailer", resp.Trailer)
	}
	if err != nil {
		h.bodyFailed(r, s, rec, err)
		return
	}
	for k, vv := range resp.Trailer {
		hdr[http.TrailerPrefix+k] = vv
	}
}

// fail answers a request that could not be forwarded and logs why.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, s *session, st *site, rt *route, rec *exchange, err error) {
	status := statusFor(r.Context(), err)
	rec.status, rec.err = status, err
	if status != statusClientClosed {
		rt.headers.apply(w.Header(), r, "")
		st.headers.apply(w.Header(), r, "")
	}
	switch status {
	case statusClientClosed:
		if ce := h.srv.logger.Check(zap.DebugLevel, "client went away"); ce != nil {
			ce.Write(zap.Uint64("session", s.id), zap.String("uri", r.RequestURI), zap.Error(err))
		}
		return
	case http.StatusBadRequest:
		h.srv.metrics.refused.WithLabelValues(refusedMalformed).Inc()
		h.srv.errLog.get().Info("bad request refused",
			zap.Uint64("session", s.id), zap.String("remote", r.RemoteAddr), zap.Error(err))
		rec.httpError(w, "bad request", status)
		return
	}
	log := h.srv.errLog.get()
	if te, ok := errors.AsType[*upstream.TLSError](err); ok {
		log = log.With(zap.String("tls_failure", te.Reason))
	}
	log.Warn("upstream request failed",
		zap.Uint64("session", s.id), zap.String("method", r.Method), zap.String("host", r.Host),
		zap.String("uri", r.RequestURI), zap.String("backend", rec.backend), zap.Int("status", status),
		zap.Error(err))
	rec.httpError(w, http.StatusText(status), status)
}

// statusFor maps a forwarding error to the status the client gets: 400 for a
// request the proxy refuses, 504 when the backend timed out, 502 when it is
// unreachable or broke the exchange, and 499 (nothing sent) when the client
// itself went away.
func statusFor(ctx context.Context, err error) int {
	var bad *badRequestError
	var gone *clientGoneError
	var dial *upstream.DialError
	switch {
	case errors.As(err, &bad), errors.Is(err, upstream.ErrMalformedRequest):
		return http.StatusBadRequest
	case errors.As(err, &gone), ctx.Err() != nil, errors.Is(err, context.Canceled),
		errors.Is(err, errSessionClosed), errors.Is(err, upstream.ErrLeaseClosed):
		return statusClientClosed
	case errors.As(err, &dial):
		if dial.Timeout() {
			return http.StatusGatewayTimeout
		}
		return http.StatusBadGateway
	case errors.Is(err, upstream.ErrResponseHeaderTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, upstream.ErrNoHealthyBackend):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// log writes the access log line of one request, which took d.
func (h *handler) log(r *http.Request, s *session, rec *exchange, d time.Duration) {
	ce := h.srv.access.Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.Uint64("session", s.id), zap.String("proto", r.Proto), zap.String("remote", r.RemoteAddr),
		zap.String("method", r.Method), zap.String("host", r.Host), zap.String("uri", r.RequestURI),
		zap.String("user_agent", r.UserAgent()),
		zap.Int("status", rec.status), zap.Int64("bytes", rec.written),
		zap.Duration("duration", d), zap.String("backend", rec.backend),
		// The connection's path changes so far (RFC 9000 §9); always 0 on TCP.
		zap.Int64("path_changes", s.pathChanges.Load()),
	}
	if rec.upstreamBytes > 0 {
		fields = append(fields, zap.Int64("bytes_up", rec.upstreamBytes))
	}
	if rec.err != nil {
		fields = append(fields, zap.Error(rec.err))
	}
	ce.Write(fields...)
}
