package proxy

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/quic-go/quic-go/http3"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// websocketGUID is the constant of RFC 6455 §1.3 that Sec-WebSocket-Accept
// hashes with the key.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// isExtendedConnect reports an HTTP/3 extended CONNECT (RFC 9220): http3
// puts :protocol in r.Proto.
func isExtendedConnect(r *http.Request) bool {
	return r.Method == http.MethodConnect && r.ProtoMajor == 3 && r.Proto != "HTTP/3.0"
}

// isWebSocketUpgrade reports an HTTP/1.1 WebSocket handshake (RFC 6455 §4.1).
func isWebSocketUpgrade(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.Method == http.MethodGet &&
		httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") &&
		httpguts.HeaderValuesContainsToken(r.Header["Upgrade"], "websocket")
}

// acceptKey is the Sec-WebSocket-Accept value for key.
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// newWebSocketKey is a fresh Sec-WebSocket-Key: 16 random bytes.
func newWebSocketKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// websocket carries a WebSocket over the session's backend on a dedicated
// upstream connection: an HTTP/1.1 Upgrade handshake upstream, then bytes
// both ways. The client side is an HTTP/3 extended CONNECT stream (RFC 9220:
// the backend's 101 becomes 200) or a hijacked HTTP/1.1 connection (the
// backend's 101 goes through). A client that migrates keeps it: same stream,
// same upstream connection.
func (h *handler) websocket(w http.ResponseWriter, r *http.Request, s *session, st *site, rt *route, rec *exchange) {
	h3 := r.ProtoMajor == 3
	if h3 && r.Header.Get("Sec-Websocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		rec.httpError(w, "unsupported WebSocket version", http.StatusBadRequest)
		return
	}
	lease, err := s.lease(rt.proxy.pool, r)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	target := ""
	if rt.strip != "" {
		target = stripTarget(r, rt.strip)
	}
	out, err := upstreamRequest(r, s, target, false)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	rt.proxy.headerUp.apply(out.Header, r, lease.Backend().Addr)
	if host, ok := out.Header["Host"]; ok {
		if len(host) > 0 {
			out.Host = host[0]
		}
		delete(out.Header, "Host")
	}
	key := r.Header.Get("Sec-Websocket-Key")
	if h3 {
		key = newWebSocketKey() // RFC 9220 §4: no key on HTTP/3; the backend needs one
	}
	out.Method = http.MethodGet
	out.Header["Connection"] = []string{"Upgrade"}
	out.Header["Upgrade"] = []string{"websocket"}
	out.Header["Sec-Websocket-Key"] = []string{key}
	out.Header["Sec-Websocket-Version"] = []string{"13"}

	resp, up, err := lease.Upgrade(out)
	if err != nil {
		h.fail(w, r, s, st, rt, rec, err)
		return
	}
	rec.backend = lease.Backend().Addr
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The backend refused the upgrade (401, 403, 426...): pass it on.
		defer resp.Body.Close()
		hdr := w.Header()
		copyResponseHeader(hdr, resp.Header)
		rt.proxy.headerDown.apply(hdr, r, rec.backend)
		rec.status = resp.StatusCode
		w.WriteHeader(resp.StatusCode)
		rec.written, _ = copyBody(w, resp)
		return
	}
	defer up.Close()
	if got := resp.Header.Get("Sec-Websocket-Accept"); got != acceptKey(key) ||
		!httpguts.HeaderValuesContainsToken(resp.Header["Upgrade"], "websocket") {
		// RFC 6455 §4.2.2: a handshake without the right accept value is not
		// a WebSocket; nothing may flow.
		h.fail(w, r, s, st, rt, rec, fmt.Errorf("upstream %s: websocket handshake: bad Sec-WebSocket-Accept or Upgrade", rec.backend))
		return
	}

	hdr := w.Header()
	for _, k := range []string{"Sec-Websocket-Protocol", "Sec-Websocket-Extensions", "Set-Cookie"} {
		if v, ok := resp.Header[k]; ok {
			hdr[k] = v
		}
	}
	rt.proxy.headerDown.apply(hdr, r, rec.backend)
	var client halfConn
	if h3 {
		rec.status = http.StatusOK
		w.WriteHeader(http.StatusOK)
		str, err := w.(http3.HTTPStreamer).HTTPStream()
		if err != nil {
			rec.err = err
			return
		}
		defer str.Close()
		client = h3Side{str}
	} else {
		c, err := hijack(w, r, key, hdr)
		if err != nil {
			rec.status, rec.err = statusClientClosed, err
			return
		}
		defer c.Close()
		rec.status = http.StatusSwitchingProtocols
		client = c
	}
	rec.stream = true
	defer s.longStream()()
	rec.upstreamBytes, rec.written, rec.err = splice(client, tcpSide{Conn: up, r: up})
	if rec.err != nil && !errors.Is(rec.err, errClientWrite) {
		if ce := h.srv.logger.Check(zap.DebugLevel, "websocket ended with an error"); ce != nil {
			ce.Write(zap.Uint64("session", s.id), zap.Error(rec.err))
		}
	}
}

// hijack takes an HTTP/1.1 connection over from net/http and completes the
// client's WebSocket handshake on it with hdr.
func hijack(w http.ResponseWriter, r *http.Request, key string, hdr http.Header) (tcpSide, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return tcpSide{}, err
	}
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	b.WriteString("Sec-WebSocket-Accept: " + acceptKey(key) + "\r\n")
	for k, vv := range hdr {
		if k == "Alt-Svc" || k == "Content-Type" {
			continue
		}
		for _, v := range vv {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	if _, err := brw.WriteString(b.String()); err != nil {
		conn.Close()
		return tcpSide{}, err
	}
	if err := brw.Flush(); err != nil {
		conn.Close()
		return tcpSide{}, err
	}
	_ = conn.SetDeadline(time.Time{}) // net/http's header and idle timeouts no longer apply
	return tcpSide{Conn: conn, r: brw.Reader}, nil
}
