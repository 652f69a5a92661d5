package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/upstream"
)

// statusClientClosed is logged (never sent) when the client went away before
// its response: nginx's 499.
const statusClientClosed = 499

// site is one site block, shared by the handlers of every port it is on.
type site struct {
	name string // the block's first address, for logs
	pool *upstream.Pool
}

// router picks a site by the request's host: an exact name, then the
// closest "*.parent" wildcard, then the port's catch-all.
type router struct {
	exact    map[string]*site
	wildcard map[string]*site // "example.com" for "*.example.com"
	catchAll *site
}

func newRouter() *router {
	return &router{exact: map[string]*site{}, wildcard: map[string]*site{}}
}

func (rt *router) add(host string, s *site) {
	switch {
	case host == "":
		rt.catchAll = s
	case strings.HasPrefix(host, "*."):
		rt.wildcard[host[2:]] = s
	default:
		rt.exact[host] = s
	}
}

func (rt *router) match(hostport string) *site {
	host := hostOnly(hostport)
	if s := rt.exact[host]; s != nil {
		return s
	}
	if s := rt.matchWildcard(host); s != nil {
		return s
	}
	return rt.catchAll
}

// matchWildcard finds the "*.parent" site for host: one label deep, as TLS
// wildcards match (RFC 6125 §6.4.3).
func (rt *router) matchWildcard(host string) *site {
	if len(rt.wildcard) == 0 {
		return nil
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		return rt.wildcard[host[i+1:]]
	}
	return nil
}

// hostOnly strips the port, IPv6 brackets and a trailing dot from a Host
// value and lower-cases it.
func hostOnly(hostport string) string {
	host := hostport
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(host, "."), "["), "]")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}

// handler serves the requests of one port, HTTP/3 and TCP alike.
type handler struct {
	srv    *Server
	router *router
	altSvc []string // Alt-Svc for TCP responses; nil on HTTP/3
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	st := h.router.match(r.Host)
	rec := exchange{status: http.StatusMisdirectedRequest}
	defer func() {
		s.observePath() // a long request (a stream) may have seen the path change
		h.srv.metrics.request(s.proto, rec.status)
		h.log(r, s, &rec, start)
	}()
	if st == nil {
		// RFC 9110 §15.5.20: this connection is not authoritative for the
		// host; a client may retry on another connection. Never another
		// site's content.
		http.Error(w, "misdirected request: no site for this host", http.StatusMisdirectedRequest)
		return
	}
	h.reverseProxy(w, r, s, st, &rec)
}

// exchange is what the access log records about one request.
type exchange struct {
	status  int
	written int64
	backend string
	err     error
}

func (h *handler) reverseProxy(w http.ResponseWriter, r *http.Request, s *session, st *site, rec *exchange) {
	lease, err := s.lease(st.pool)
	if err != nil {
		h.fail(w, r, s, rec, err)
		return
	}
	rec.backend = lease.Backend().Addr
	out, err := outRequest(w, r, s)
	if err != nil {
		h.fail(w, r, s, rec, err)
		return
	}
	resp, err := lease.RoundTrip(out)
	if err != nil {
		h.fail(w, r, s, rec, err)
		return
	}
	defer resp.Body.Close()

	hdr := w.Header()
	copyResponseHeader(hdr, resp.Header)
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
	if err != nil {
		rec.err = err
		if errors.Is(err, errClientWrite) || r.Context().Err() != nil {
			return // the client went away; closing the body frees the connection
		}
		// The backend failed mid-body. Reset the client's stream so it sees
		// a truncated response, never a complete-looking one.
		h.srv.errLog.Warn("upstream response body failed",
			zap.Uint64("session", s.id), zap.String("backend", rec.backend),
			zap.String("uri", r.RequestURI), zap.Int64("written", n), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
	for k, vv := range resp.Trailer {
		hdr[http.TrailerPrefix+k] = vv
	}
}

// fail answers a request that could not be forwarded and logs why.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, s *session, rec *exchange, err error) {
	status := statusFor(r.Context(), err)
	rec.status, rec.err = status, err
	switch status {
	case statusClientClosed:
		if ce := h.srv.logger.Check(zap.DebugLevel, "client went away"); ce != nil {
			ce.Write(zap.Uint64("session", s.id), zap.String("uri", r.RequestURI), zap.Error(err))
		}
		return
	case http.StatusBadRequest:
		h.srv.errLog.Info("bad request refused",
			zap.Uint64("session", s.id), zap.String("remote", r.RemoteAddr), zap.Error(err))
		http.Error(w, "bad request", status)
		return
	}
	h.srv.errLog.Warn("upstream request failed",
		zap.Uint64("session", s.id), zap.String("method", r.Method), zap.String("host", r.Host),
		zap.String("uri", r.RequestURI), zap.String("backend", rec.backend), zap.Int("status", status),
		zap.Error(err))
	http.Error(w, http.StatusText(status), status)
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
	case errors.As(err, &bad):
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
	}
	return http.StatusBadGateway
}

// errClientWrite marks a failed write to the client.
var errClientWrite = errors.New("write to client")

// bufferedReader is implemented by upstream response bodies: how much can be
// read without waiting on the network.
type bufferedReader interface{ Buffered() int }

// flushSlack is how many buffered bytes still count as "nothing buffered":
// chunked framing of a next chunk may sit in the buffer before its data.
const flushSlack = 8

var copyPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyBody streams a response body to the client as it arrives. It flushes
// whenever the upstream has nothing more buffered, so a burst goes out in as
// few packets as possible and a trickle (server-sent events, long polling)
// goes out event by event. A body of known length is not flushed after its
// last byte: the end of the handler sends it with the end of the stream.
func copyBody(w http.ResponseWriter, resp *http.Response) (int64, error) {
	bufp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bufp)
	buf := *bufp
	flusher, _ := w.(http.Flusher)
	br, _ := resp.Body.(bufferedReader)
	var written int64
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return written, errors.Join(errClientWrite, werr)
			}
			written += int64(n)
			complete := resp.ContentLength >= 0 && written >= resp.ContentLength
			if flusher != nil && !complete && (br == nil || br.Buffered() <= flushSlack) {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// announceTrailers declares the backend's trailer fields before the header
// goes out, so both net/http and http3 send them after the body.
func announceTrailers(hdr http.Header, trailer http.Header) {
	keys := make([]string, 0, len(trailer))
	for k := range trailer {
		keys = append(keys, k)
	}
	hdr["Trailer"] = []string{strings.Join(keys, ", ")}
}

// log writes the access log line of one request.
func (h *handler) log(r *http.Request, s *session, rec *exchange, start time.Time) {
	ce := h.srv.access.Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.Uint64("session", s.id), zap.String("proto", r.Proto), zap.String("remote", r.RemoteAddr),
		zap.String("method", r.Method), zap.String("host", r.Host), zap.String("uri", r.RequestURI),
		zap.Int("status", rec.status), zap.Int64("bytes", rec.written),
		zap.Duration("duration", time.Since(start)), zap.String("backend", rec.backend),
	}
	if rec.err != nil {
		fields = append(fields, zap.Error(rec.err))
	}
	ce.Write(fields...)
}
