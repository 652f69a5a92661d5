package proxy

import (
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
)

// Why a request was refused as the client's error: the "reason" label of
// roamgate_requests_refused_total.
const (
	refusedHeadTooLarge  = "head_too_large"  // 431: the whole head over max_header_bytes
	refusedFieldTooLarge = "field_too_large" // 431: one field over max_header_field_bytes
	refusedURITooLong    = "uri_too_long"    // 414: the request line over max_header_field_bytes
	refusedMalformed     = "malformed"       // 400: the request cannot be forwarded as it is
)

// headSize measures a request head as it would go upstream over HTTP/1.1
// (see configs.Limits): the request line, the Host line and every field
// line, with their CRLFs. It stops at the first line over field and
// returns that line's size and name ("" for the request line).
func headSize(r *http.Request, field int) (total, over int, name string) {
	line := len(r.Method) + 1 + len(r.RequestURI) + len(" HTTP/1.1")
	if line > field {
		return 0, line, ""
	}
	total = line + 2 + len("Host: ") + len(r.Host) + 2 + 2
	for k, vv := range r.Header {
		for _, v := range vv {
			n := len(k) + 2 + len(v)
			if n > field {
				return 0, n, k
			}
			total += n + 2
		}
	}
	return total, 0, ""
}

// checkHead refuses a request whose head exceeds the site's limits: 414
// for a request line over the field limit, 431 for a field over it or a
// head over the total. Nothing goes upstream. It reports whether the
// request may go on.
func (h *handler) checkHead(w http.ResponseWriter, r *http.Request, s *session, st *site, rec *exchange) bool {
	total, over, name := headSize(r, st.limits.FieldBytes)
	if over == 0 && total <= st.limits.HeaderBytes {
		return true
	}
	h.refuseHead(w, r, s, st, rec, total, over, name)
	return false
}

//go:noinline
func (h *handler) refuseHead(w http.ResponseWriter, r *http.Request, s *session, st *site, rec *exchange, total, over int, name string) {
	status, reason := http.StatusRequestHeaderFieldsTooLarge, refusedHeadTooLarge
	var why string
	switch {
	case over > 0 && name == "":
		status, reason = http.StatusRequestURITooLong, refusedURITooLong
		why = "request line of " + strconv.Itoa(over) + " bytes over max_header_field_bytes " + strconv.Itoa(st.limits.FieldBytes)
	case over > 0:
		reason = refusedFieldTooLarge
		why = "header field " + quoteForLog(name) + " of " + strconv.Itoa(over) + " bytes over max_header_field_bytes " + strconv.Itoa(st.limits.FieldBytes)
	default:
		why = "request head of " + strconv.Itoa(total) + " bytes over max_header_bytes " + strconv.Itoa(st.limits.HeaderBytes)
	}
	rec.err = &badRequestError{why}
	h.srv.metrics.refused.WithLabelValues(reason).Inc()
	h.srv.errLog.get().Info("request refused", zap.Uint64("session", s.id), zap.String("remote", r.RemoteAddr),
		zap.String("site", st.name), zap.Int("status", status), zap.String("reason", why))
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close") // what follows the head is not read
	}
	rec.httpError(w, http.StatusText(status), status)
}

// siteLimits is a site's limits, with the defaults for any left unset.
func siteLimits(l configs.Limits) configs.Limits {
	if l.HeaderBytes == 0 {
		l.HeaderBytes = configs.DefaultMaxHeaderBytes
	}
	if l.FieldBytes == 0 {
		l.FieldBytes = configs.DefaultMaxHeaderFieldBytes
	}
	return l
}

// protocolHeaderLimit is the header limit the protocol layers (quic-go's
// QPACK decoding, net/http's HTTP/1.1 reader and HTTP/2 SETTINGS) enforce
// before a request reaches the handler: twice the largest site limit, a
// bound on memory that leaves the exact per-site check (checkHead) to the
// handler. HTTP/3 and HTTP/2 count 32 bytes more per field than the
// HTTP/1.1 form does (RFC 9114 §4.2.2, RFC 9113 §6.5.2), so a head within
// a site's limit is never refused first by the protocol layer.
func protocolHeaderLimit(cfg *configs.Config) int {
	n := cfg.MaxHeaderBytes
	for _, sc := range cfg.Sites {
		n = max(n, sc.Limits.HeaderBytes)
	}
	if n == 0 {
		n = configs.DefaultMaxHeaderBytes
	}
	return 2 * n
}
