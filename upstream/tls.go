package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// TLS configures TLS to a pool's backends (reverse_proxy https://...).
// Every connection to every backend of the pool is then TLS: a session's
// keep-alive connections, its dedicated ones (WebSocket) and the health
// checks'. They speak HTTP/1.1 (ALPN "http/1.1"), as the wire writer does.
// The TCP connect and the handshake together take at most
// Config.DialTimeout; a handshake that fails is a DialError wrapping a
// TLSError, so the request may go to another backend and the failure
// counts as a failed dial.
//
// TLS session resumption never crosses sessions: each lease keeps the
// session tickets of its own connections, so a backend that keys state on
// its TLS sessions sees each client session as its own, as it sees its TCP
// connections. A session's second connection resumes the first one's TLS
// session; health checks never resume.
type TLS struct {
	// RootCAs verifies the backends' certificates. Nil means the system
	// roots.
	RootCAs *x509.CertPool
	// ServerName is sent as SNI and must be in every backend's
	// certificate. Empty means each backend's own host: its name, or for an
	// IP address no SNI and a certificate that lists the address.
	ServerName string
	// InsecureSkipVerify accepts any certificate of any name: anyone on
	// the path to the backend can read and change the traffic. New logs a
	// warning for it.
	InsecureSkipVerify bool
	// Certificates are offered to a backend that asks for a client
	// certificate (mutual TLS). Empty means none.
	Certificates []tls.Certificate
}

// TLSError is a failed TLS handshake with a backend. It comes wrapped in a
// DialError: no byte of the request reached the backend.
type TLSError struct {
	// Reason says why, for logs and the TLSHandshakeFailures metric: one
	// of "unknown_authority" (the certificate chains to no trusted root),
	// "name_mismatch" (it is not for the server name), "expired",
	// "not_yet_valid", "bad_certificate" (another verification failure),
	// "timeout" (no handshake within Config.DialTimeout) and "handshake"
	// (anything else: an alert from the backend, no common protocol
	// version, a peer that does not speak TLS).
	Reason string
	Err    error
}

func (e *TLSError) Error() string { return "tls handshake (" + e.Reason + "): " + e.Err.Error() }
func (e *TLSError) Unwrap() error { return e.Err }

// tlsReason classifies a handshake error for TLSError.Reason; now is when
// the handshake failed.
func tlsReason(err error, now time.Time) string {
	if ne, ok := errors.AsType[net.Error](err); errors.Is(err, context.DeadlineExceeded) || ok && ne.Timeout() {
		return "timeout"
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return "unknown_authority"
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return "name_mismatch"
	}
	if ci, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		if ci.Reason == x509.Expired && ci.Cert != nil {
			if now.Before(ci.Cert.NotBefore) {
				return "not_yet_valid"
			}
			return "expired"
		}
		return "bad_certificate"
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return "bad_certificate"
	}
	return "handshake"
}

// tlsConfigs returns the client TLS configuration of each backend: the
// pool's settings with the backend's host as the server name unless
// t.ServerName is set. Unix socket backends cannot take TLS.
func tlsConfigs(t *TLS, backends []string) ([]*tls.Config, error) {
	base := &tls.Config{
		RootCAs:            t.RootCAs,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
		Certificates:       t.Certificates,
		// The wire writer speaks HTTP/1.1 only; a backend that would pick
		// h2 must not.
		NextProtos: []string{"http/1.1"},
	}
	confs := make([]*tls.Config, len(backends))
	for i, addr := range backends {
		network, address := dialTarget(addr)
		if network != "tcp" {
			return nil, fmt.Errorf("backend %q: TLS over a Unix socket is not supported", addr)
		}
		c := base.Clone()
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return nil, fmt.Errorf("backend %q: %w", addr, err)
			}
			// crypto/tls sends no SNI for an IP address and checks the
			// certificate's IP addresses instead (RFC 6066 §3).
			c.ServerName = host
		}
		confs[i] = c
	}
	return confs, nil
}

// sessionTicketsPerLease bounds the TLS sessions a lease remembers: one
// per backend it has used, and a lease rarely uses more than one.
const sessionTicketsPerLease = 4

// handshake runs the client side of TLS on nc, a new connection to b,
// with tickets as the session cache (nil: no resumption), within ctx.
// On failure it closes nc.
func (b *Backend) handshake(ctx context.Context, nc net.Conn, tickets tls.ClientSessionCache) (*tls.Conn, error) {
	conf := b.tls
	if tickets != nil {
		conf = conf.Clone()
		conf.ClientSessionCache = tickets
	}
	tc := tls.Client(nc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		reason := tlsReason(err, time.Now())
		b.pool.metrics.TLSHandshakeFailures.WithLabelValues(b.Addr, reason).Inc()
		return nil, &TLSError{Reason: reason, Err: err}
	}
	return tc, nil
}

// tlsPeekWait bounds the read that looks at what a backend sent on an idle
// TLS connection (see tlsQuiet): the bytes are there already.
const tlsPeekWait = 10 * time.Millisecond

// tlsQuiet reports whether an idle TLS connection on which the backend sent
// something unasked can still carry a request. crypto/tls handles TLS 1.3
// post-handshake messages (a NewSessionTicket sent late, a KeyUpdate) as it
// reads, and they leave the connection usable; application data, an alert
// (the close_notify of a backend closing the connection) or EOF do not.
func tlsQuiet(tc *tls.Conn) bool {
	_ = tc.SetReadDeadline(time.Now().Add(tlsPeekWait))
	var b [1]byte
	n, err := tc.Read(b[:])
	_ = tc.SetReadDeadline(time.Time{})
	return n == 0 && errors.Is(err, os.ErrDeadlineExceeded)
}

// closeConn closes a backend connection. A TLS connection sends its
// close_notify first when graceful; otherwise, or when a write is stuck on
// a backend that stopped reading, only the socket is closed: crypto/tls
// would wait up to 5 s to write the alert.
func closeConn(nc net.Conn, graceful bool) error {
	if tc, ok := nc.(*tls.Conn); ok && !graceful {
		return tc.NetConn().Close()
	}
	return nc.Close()
}
