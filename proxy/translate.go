package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/http/httpguts"

	"github.com/roamgate/roamgate/upstream"
)

// hopByHop are the connection-specific header fields of RFC 9110 §7.6.1 (and
// the legacy ones every proxy drops). They never cross the proxy, in either
// direction; HTTP/3 forbids them outright (RFC 9114 §4.2).
var hopByHop = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// forwarding are the client-supplied forwarding fields, dropped so a client
// cannot forge its address; the proxy sets its own.
var forwarding = map[string]bool{
	"Forwarded":          true,
	"X-Forwarded-For":    true,
	"X-Forwarded-Host":   true,
	"X-Forwarded-Proto":  true,
	"X-Forwarded-Port":   true,
	"X-Real-Ip":          true,
	"X-Forwarded-Server": true,
}

var (
	httpsValue    = []string{"https"}
	trailersValue = []string{"trailers"}
)

// badRequestError is a client request the proxy refuses to translate; it
// becomes a 400 and nothing reaches the backend.
type badRequestError struct{ reason string }

func (e *badRequestError) Error() string { return "bad request: " + e.reason }

// outRequest translates a client request (HTTP/3, HTTP/2 or HTTP/1.1) into
// the HTTP/1.1 request for the backend, after checkRequest refused what
// could smuggle a second request through the downgrade:
//   - hop-by-hop fields and the fields the client's Connection header lists
//     are dropped, TE is kept only as "trailers", Expect is answered here;
//   - client-supplied forwarding fields are dropped and X-Forwarded-For,
//     X-Forwarded-Proto, X-Forwarded-Host and Forwarded are set from the
//     address the session started with; Early-Data: 1 marks a request that
//     arrived in 0-RTT data (RFC 8470 §5.1);
//   - Host is the client's :authority / Host;
//   - the request target is origin-form (never absolute-form): target, or
//     the client's own when target is empty;
//   - the body: see upstreamBody.
//
// The request and its header map are o's.
func outRequest(o *outgoing, w http.ResponseWriter, r *http.Request, s *session, target string, early bool) (*http.Request, error) {
	out, err := o.fill(r, s, target, early)
	if err != nil {
		return nil, err
	}
	if r.ProtoMajor == 3 && httpguts.HeaderValuesContainsToken(r.Header["Expect"], "100-continue") {
		// net/http answers Expect for HTTP/1.1 and HTTP/2 clients when the
		// body is first read; http3 does not, so roamgate does (RFC 9110
		// §10.1.1: a proxy may answer it itself).
		w.WriteHeader(http.StatusContinue)
	}
	body, n, eof, err := upstreamBody(r)
	if err != nil {
		return nil, err
	}
	out.Body, out.ContentLength = nil, n
	if body != nil {
		if eof {
			// The body was read whole: its trailer is here, and is checked
			// before anything goes upstream.
			if err := checkTrailer(r.Trailer); err != nil {
				return nil, err
			}
		}
		out.Trailer = maps.Clone(r.Trailer) // the announced names; values arrive at the end
		out.Body = &clientBody{Reader: body, client: r, upstream: out, rc: http.NewResponseController(w), eof: eof}
	}
	return out, nil
}

// upstreamRequest is outRequest without the body: the checked request, its
// translated header and target, and no body yet, in new memory.
func upstreamRequest(r *http.Request, s *session, target string, early bool) (*http.Request, error) {
	return new(outgoing).fill(r, s, target, early)
}

// outgoing is a request for the backend and the header map it owns. The
// reverse proxy's come from outgoingPool and go back once the exchange is
// over: they are the two largest allocations of a proxied request.
type outgoing struct {
	req http.Request
	hdr http.Header
}

var outgoingPool = sync.Pool{New: func() any { return new(outgoing) }}

// maxPooledHeader bounds the header maps kept for reuse, so a request with
// a huge header leaves no huge map behind.
const maxPooledHeader = 32

// getOutgoing takes an outgoing request from the pool.
func getOutgoing() *outgoing { return outgoingPool.Get().(*outgoing) }

// release returns o to the pool. Nothing may use o's request after: the
// upstream round trip, its body writer and its response body must be over.
func (o *outgoing) release() {
	if len(o.hdr) > maxPooledHeader {
		o.hdr = nil
	} else {
		clear(o.hdr)
	}
	o.req = http.Request{}
	outgoingPool.Put(o)
}

// fill makes o's request the upstream form of r (see upstreamRequest) and
// returns it.
func (o *outgoing) fill(r *http.Request, s *session, target string, early bool) (*http.Request, error) {
	if err := checkRequest(r); err != nil {
		return nil, err
	}
	if o.hdr == nil {
		o.hdr = make(http.Header, len(r.Header)+5)
	}
	h := o.hdr
	var listed []string
	for _, v := range r.Header["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				listed = append(listed, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
	for k, vv := range r.Header {
		if notForwarded[k] || (len(listed) > 0 && contains(listed, k)) {
			continue
		}
		h[k] = vv
	}
	for _, v := range r.Header["Te"] {
		if httpguts.HeaderValuesContainsToken([]string{v}, "trailers") {
			h["Te"] = trailersValue
			break
		}
	}
	h["X-Forwarded-For"] = s.xff
	h["X-Forwarded-Proto"] = httpsValue
	fh := s.forwardedFor(r.Host)
	h["X-Forwarded-Host"] = fh.xfh
	h["Forwarded"] = fh.fwd
	if early {
		h["Early-Data"] = earlyDataValue
	}

	out := &o.req
	*out = *r // keeps r's context; everything the wire needs is set below
	out.Header = h
	out.RequestURI = target
	if target == "" {
		out.RequestURI = requestTarget(r)
	}
	if err := upstream.CheckRequestLine(out.Method, out.RequestURI, out.Host); err != nil {
		// quic-go passes a :path or :authority with a space, say, which
		// would split the request line: refused before any upstream I/O.
		return nil, badRequest(err.Error())
	}
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.Close = false
	out.TransferEncoding = nil
	out.Body, out.ContentLength, out.Trailer = nil, 0, nil
	return out, nil
}

var earlyDataValue = []string{"1"}

// dropped are client fields the upstream request carries otherwise: Host
// (out.Host), Content-Length (the wire writer frames the body from
// out.ContentLength), Expect (answered here) and Early-Data (the proxy's to
// set, RFC 8470 §5.1).
var dropped = map[string]bool{"Host": true, "Content-Length": true, "Expect": true, "Early-Data": true}

// notForwarded is the union of hopByHop, forwarding and dropped: one map
// lookup per client field instead of three.
var notForwarded = func() map[string]bool {
	m := map[string]bool{}
	for _, set := range []map[string]bool{hopByHop, forwarding, dropped} {
		maps.Copy(m, set)
	}
	return m
}()

// connectionSpecific are the fields HTTP/2 and HTTP/3 forbid (RFC 9113
// §8.2.2, RFC 9114 §4.2): a request carrying one is malformed.
var connectionSpecific = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// checkRequest refuses requests that cannot be translated safely, each with
// a 400:
//   - a header name that is not a token, or a value with CR, LF or NUL
//     (HTTP/3 and HTTP/2 carry such bytes as data; in HTTP/1.1 they would
//     end the field, or the header, early);
//   - on HTTP/2 and HTTP/3, connection-specific fields (Transfer-Encoding
//     above all: framing is the protocol's, never the client's);
//   - an Upgrade that is not a WebSocket upgrade;
//   - several Content-Length values that differ.
//
// Most of these never get here: quic-go and net/http refuse them first.
// The checks stay, so a gap in one of them cannot become a smuggled
// request.
func checkRequest(r *http.Request) error {
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return badRequest("invalid header name ", quoteForLog(k))
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return badRequest("invalid value in header ", k)
			}
		}
	}
	if r.ProtoMajor >= 2 {
		for _, k := range connectionSpecific {
			if _, ok := r.Header[k]; ok {
				return badRequest("connection-specific header ", k, " in an ", r.Proto, " request")
			}
		}
		for _, v := range r.Header["Te"] {
			if !strings.EqualFold(textproto.TrimString(v), "trailers") {
				return badRequest("TE other than trailers in an ", r.Proto, " request")
			}
		}
	}
	if up, ok := r.Header["Upgrade"]; ok && !(len(up) == 1 && strings.EqualFold(up[0], "websocket")) {
		return badRequest("Upgrade to ", quoteForLog(strings.Join(up, ",")), " is not supported")
	}
	if cl := r.Header["Content-Length"]; len(cl) > 1 {
		for _, v := range cl[1:] {
			if v != cl[0] {
				return badRequest("differing Content-Length values")
			}
		}
	}
	return nil
}

// badRequest builds the error of a refused request from its parts. It is
// never inlined, so the error's string building stays out of the frames of
// the request path (see handler.refuseClientCert).
//
//go:noinline
func badRequest(parts ...string) error {
	return &badRequestError{strings.Join(parts, "")}
}

// requestTarget is the origin-form target: the raw path and query as the
// client sent them when it sent origin-form, or rebuilt from the URL.
func requestTarget(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	if r.Method == http.MethodOptions && r.RequestURI == "*" {
		return "*"
	}
	return r.URL.RequestURI()
}

// prefetchPool holds the buffers that look at the start of a body of
// unknown length.
var prefetchPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// upstreamBody decides how the request body goes upstream: its reader, its
// length (-1: unknown, sent chunked) and whether it was read to the end
// already. A body of unknown length (HTTP/3 without Content-Length, HTTP/1.1
// chunked) is read once: if it ends at once the backend gets a
// Content-Length (what legacy backends like best), or no body at all, so a
// GET never turns into a chunked request; otherwise it streams chunked.
// Expect: 100-continue is not read ahead, since the client waits for the
// interim response.
func upstreamBody(r *http.Request) (body io.Reader, n int64, eof bool, err error) {
	switch {
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0:
		return nil, 0, true, nil
	case r.ContentLength > 0 && r.ContentLength <= verifyBodyLimit && r.ProtoMajor >= 2:
		return verifiedBody(r)
	case r.ContentLength > 0:
		return r.Body, r.ContentLength, false, nil
	case httpguts.HeaderValuesContainsToken(r.Header["Expect"], "100-continue"):
		return r.Body, -1, false, nil
	}
	bufp := prefetchPool.Get().(*[]byte)
	defer prefetchPool.Put(bufp)
	buf := *bufp
	var rerr error
	for n == 0 && rerr == nil {
		var m int
		m, rerr = r.Body.Read(buf)
		n = int64(m)
	}
	switch {
	case rerr == io.EOF && n == 0:
		return nil, 0, true, nil
	case rerr == io.EOF:
		return bytes.NewReader(bytes.Clone(buf[:n])), n, true, nil
	case rerr != nil:
		return nil, 0, false, clientBodyError(r, rerr)
	}
	return io.MultiReader(bytes.NewReader(bytes.Clone(buf[:n])), r.Body), -1, false, nil
}

// verifyBodyLimit is the largest HTTP/2 or HTTP/3 body read whole before
// it goes upstream, so that one whose length disagrees with its
// Content-Length (RFC 9114 §4.1.2, RFC 9113 §8.1.1) is refused with 400
// before the backend sees any of it. Longer bodies stream; a mismatch then
// aborts the upstream request midway (the backend sees it cut off).
const verifyBodyLimit = 64 << 10

// verifiedBody reads a short HTTP/2 or HTTP/3 body to its end and checks its
// length.
func verifiedBody(r *http.Request) (io.Reader, int64, bool, error) {
	buf := make([]byte, r.ContentLength+1)
	n, err := io.ReadFull(r.Body, buf)
	switch {
	case err == nil:
		return nil, 0, false, &badRequestError{"body longer than its Content-Length " + strconv.FormatInt(r.ContentLength, 10)}
	case err == io.ErrUnexpectedEOF && int64(n) == r.ContentLength:
		return bytes.NewReader(buf[:n]), int64(n), true, nil
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return nil, 0, false, &badRequestError{"body of " + strconv.Itoa(n) + " bytes, Content-Length " + strconv.FormatInt(r.ContentLength, 10)}
	case r.Context().Err() != nil:
		return nil, 0, false, &clientGoneError{err}
	}
	// The protocol layer refused the body (http3: too much data, a short
	// stream): a malformed request.
	return nil, 0, false, &badRequestError{"body does not match its Content-Length: " + err.Error()}
}

// clientGoneError is a failure reading from the client: nothing useful can
// be answered.
type clientGoneError struct{ err error }

func (e *clientGoneError) Error() string { return "read client request: " + e.err.Error() }
func (e *clientGoneError) Unwrap() error { return e.err }

// clientBody is the request body handed to the upstream lease.
//
// At the end of the body it copies the client's trailer fields into the
// upstream request (http3 sets them on the request it parsed, which the
// upstream request only copied). Its Close, when the body was not read to
// the end, first makes a read blocked on the client return (a read
// deadline in the past), so the lease can abandon an upload whose response
// is already over.
type clientBody struct {
	io.Reader
	client   *http.Request            // the request as the client sent it
	upstream *http.Request            // the request going upstream
	rc       *http.ResponseController // of the client's response, to interrupt a read
	eof      bool
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err != nil && err != io.EOF {
		return n, clientBodyError(b.client, err)
	}
	if err == io.EOF && !b.eof {
		b.eof = true
		if err := checkTrailer(b.client.Trailer); err != nil {
			// The body went upstream already: failing the read aborts the
			// upstream request (its connection is closed, the chunked body
			// never ends), so the backend never sees a complete message.
			return n, err
		}
		if len(b.client.Trailer) > 0 {
			if b.upstream.Trailer == nil {
				b.upstream.Trailer = make(http.Header, len(b.client.Trailer))
			}
			for k, vv := range b.client.Trailer {
				b.upstream.Trailer[k] = vv
			}
		}
	}
	return n, err
}

func (b *clientBody) Close() error {
	if !b.eof {
		_ = b.rc.SetReadDeadline(time.Unix(1, 0))
	}
	return b.client.Body.Close()
}

// clientBodyError classifies a failure reading the client's body: the
// client went away (its context ended, or it reset the stream), or its
// body is malformed (shorter or longer than its Content-Length, or
// refused by the protocol layer), a 400.
func clientBodyError(r *http.Request, err error) error {
	if r.Context().Err() != nil || errors.Is(err, context.Canceled) {
		return &clientGoneError{err}
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return &clientGoneError{err}
	}
	return badRequest("request body: ", err.Error())
}

// forbiddenTrailers are the fields a trailer section must not carry (RFC
// 9110 §6.5.1: framing, routing, request modifiers, authentication,
// content format): net/http's list, with the connection-specific fields
// and the cookies. A legacy backend that merges trailers into the header
// would act on them.
var forbiddenTrailers = map[string]bool{
	"Authorization": true, "Cache-Control": true, "Connection": true, "Content-Encoding": true,
	"Content-Length": true, "Content-Range": true, "Content-Type": true, "Expect": true,
	"Host": true, "Keep-Alive": true, "Max-Forwards": true, "Pragma": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Proxy-Connection": true,
	"Range": true, "Realm": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Www-Authenticate": true, "Cookie": true, "Set-Cookie": true, "Upgrade": true,
}

// checkTrailer refuses a client's trailer section that HTTP/1.1 cannot
// carry (a name that is not a token, a value with CR, LF or NUL) or that
// holds a field trailers must not (forbiddenTrailers).
func checkTrailer(tr http.Header) error {
	for k, vv := range tr {
		if !httpguts.ValidHeaderFieldName(k) {
			return badRequest("invalid trailer name ", quoteForLog(k))
		}
		if forbiddenTrailers[textproto.CanonicalMIMEHeaderKey(k)] {
			return badRequest("trailer field ", k, " is not allowed in a trailer")
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return badRequest("invalid value in trailer ", k)
			}
		}
	}
	return nil
}

// copyResponseHeader copies a backend's response header for the client,
// without hop-by-hop fields (HTTP/3 and HTTP/2 forbid them), the fields the
// backend's Connection header lists, and the backend's own Alt-Svc (the edge
// decides which protocols it offers).
func copyResponseHeader(dst, src http.Header) {
	var listed []string
	for _, v := range src["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				listed = append(listed, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
	for k, vv := range src {
		if hopByHop[k] || k == "Alt-Svc" || (len(listed) > 0 && contains(listed, k)) {
			continue
		}
		dst[k] = vv
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// quoteForwarded quotes a Forwarded parameter value when it is not a token
// (RFC 7239 §4): a host with a port or an IPv6 literal has ':' in it.
func quoteForwarded(v string) string {
	token := true
	escape := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !httpguts.IsTokenRune(rune(c)) {
			token = false
		}
		if c == '"' || c == '\\' {
			escape = true
		}
	}
	switch {
	case token:
		return v
	case !escape:
		return `"` + v + `"`
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

//go:noinline
func quoteForLog(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}
