package proxy

import (
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/upstream"
)

// tunnelRoute is a site's tunnel directive: CONNECT streams spliced to one
// configured TCP backend.
type tunnelRoute struct {
	backend    string
	tokens     [][]byte
	clientAuth bool // the site's handshakes require a verified client certificate
	dialer     net.Dialer
}

func newTunnelRoute(t *configs.Tunnel, clientAuth bool) *tunnelRoute {
	tr := &tunnelRoute{backend: t.Backend, clientAuth: clientAuth, dialer: net.Dialer{Timeout: t.DialTimeout}}
	if t.DialTimeout == 0 {
		tr.dialer.Timeout = configs.DefaultDialTimeout
	}
	for _, tok := range t.Tokens {
		tr.tokens = append(tr.tokens, []byte(tok))
	}
	return tr
}

// authorized reports whether a tunnel request authenticated: on a site with
// client_auth every request has (ServeHTTP checked its certificate against
// the site's CAs before routing it), else with one of the bearer tokens
// (RFC 6750 §2.1), compared in constant time.
func (t *tunnelRoute) authorized(r *http.Request) bool {
	if t.clientAuth {
		return true
	}
	auth := r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "bearer ") {
		return false
	}
	given := []byte(strings.TrimSpace(auth[7:]))
	ok := 0
	for _, tok := range t.tokens {
		ok |= subtle.ConstantTimeCompare(given, tok)
	}
	return ok == 1
}

// tunnel answers an HTTP/3 CONNECT (RFC 9114 §4.4) for a site with a
// tunnel: after authentication it splices the request stream to a new TCP
// connection to the site's configured backend, whatever authority the
// client named (roamgate is never an open proxy), until both sides end.
// The connection belongs to the session, which closes it if it ends first.
func (h *handler) tunnel(w http.ResponseWriter, r *http.Request, s *session, st *site, rec *exchange) {
	t := st.tunnel
	switch {
	case t == nil:
		rec.httpError(w, "no tunnel here", http.StatusMethodNotAllowed)
		return
	case r.ProtoMajor != 3:
		rec.httpError(w, "tunnels are served over HTTP/3", http.StatusMethodNotAllowed)
		return
	case !t.authorized(r):
		h.srv.errLog.get().Info("tunnel refused: no client certificate or valid token",
			zap.Uint64("session", s.id), zap.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="roamgate"`)
		rec.httpError(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	rec.backend = t.backend
	conn, err := t.dialer.DialContext(r.Context(), "tcp", t.backend)
	if err != nil {
		rec.status = statusFor(r.Context(), &upstream.DialError{Backend: t.backend, Err: err})
		rec.err = err
		if rec.status != statusClientClosed {
			h.srv.errLog.get().Warn("tunnel backend unreachable", zap.Uint64("session", s.id),
				zap.String("backend", t.backend), zap.Int("status", rec.status), zap.Error(err))
			rec.httpError(w, http.StatusText(rec.status), rec.status)
		}
		return
	}
	release := s.hold(conn)
	defer release()
	w.WriteHeader(http.StatusOK)
	str, err := w.(http3.HTTPStreamer).HTTPStream()
	if err != nil {
		rec.status, rec.err = statusClientClosed, fmt.Errorf("take over the stream: %w", err)
		return
	}
	defer str.Close()
	rec.status = http.StatusOK
	h.srv.logger.Info("tunnel opened", zap.Uint64("session", s.id), zap.String("backend", t.backend))
	rec.stream = true
	defer s.longStream()()
	rec.upstreamBytes, rec.written, rec.err = splice(h3Side{str}, tcpSide{Conn: conn, r: conn})
}
