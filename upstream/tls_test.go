package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

// tlsBackend is a backend that speaks HTTPS and records the TLS state of
// each request's connection.
type tlsBackend struct {
	*backend
	mu     sync.Mutex
	states map[string]tls.ConnectionState // by the proxy side's address
}

// newTLSBackend starts an HTTPS backend presenting cert. It prefers h2 in
// ALPN, as most TLS servers do, so a test sees that the pool asks for
// http/1.1 only. With clientCAs it requires a client certificate that
// chains to them.
func newTLSBackend(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool, h http.HandlerFunc, setup ...func(*http.Server)) *tlsBackend {
	t.Helper()
	tb := &tlsBackend{states: map[string]tls.ConnectionState{}}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	if clientCAs != nil {
		conf.ClientCAs, conf.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	tb.backend = startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		tb.mu.Lock()
		if _, ok := tb.states[r.RemoteAddr]; !ok && r.TLS != nil {
			tb.states[r.RemoteAddr] = *r.TLS
		}
		tb.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		io.WriteString(w, "ok "+r.RemoteAddr)
	}, conf, setup...)
	return tb
}

// state returns the TLS state of the connection from addr, as the backend
// saw it at the connection's first request.
func (tb *tlsBackend) state(t *testing.T, addr string) tls.ConnectionState {
	t.Helper()
	tb.mu.Lock()
	defer tb.mu.Unlock()
	cs, ok := tb.states[addr]
	if !ok {
		t.Fatalf("no TLS connection from %s (have %d)", addr, len(tb.states))
	}
	return cs
}

// TestTLSLeaseKeepsItsConnections: over TLS a lease's requests, one at a
// time, use one upstream connection; a request while it is busy grows
// the set by one, which resumes the lease's TLS session; another lease
// has connections of its own and never resumes the first lease's session
// (no tickets shared between sessions). Every connection negotiated
// http/1.1 and sent the backend's host as SNI.
func TestTLSLeaseKeepsItsConnections(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	release := make(chan struct{})
	tb := newTLSBackend(t, ca.IssueServer(t, "localhost", "127.0.0.1"), nil, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			<-release
		}
		io.WriteString(w, "ok "+r.RemoteAddr)
	})
	_, port, _ := net.SplitHostPort(tb.addr())
	p, m, logs := newObservedPool(t, Config{Backends: []string{"localhost:" + port}, TLS: &TLS{RootCAs: ca.Pool()}})

	l := p.Lease(1, nil)
	defer l.Close()
	first := strings.TrimPrefix(get(t, l, "/"), "ok ")
	for range 4 {
		if got := strings.TrimPrefix(get(t, l, "/"), "ok "); got != first {
			t.Fatalf("request on %s, the first on %s", got, first)
		}
	}
	// Hold the first connection busy: the next request grows the set.
	blocked := make(chan string)
	go func() { blocked <- get(t, l, "/block") }()
	eventually(t, "the blocked request at the backend", func() bool { return len(tb.conns()) == 1 && tb.conns()[first] == 6 })
	second := strings.TrimPrefix(get(t, l, "/"), "ok ")
	close(release)
	if got := strings.TrimPrefix(<-blocked, "ok "); got != first {
		t.Fatalf("blocked request on %s, want %s", got, first)
	}
	if second == first || l.Conns() != 2 {
		t.Fatalf("second connection %s (first %s), lease holds %d", second, first, l.Conns())
	}

	other := p.Lease(2, nil)
	defer other.Close()
	third := strings.TrimPrefix(get(t, other, "/"), "ok ")
	if third == first || third == second {
		t.Fatalf("another lease used connection %s of the first", third)
	}

	for _, c := range []struct {
		addr    string
		resumed bool
	}{{first, false}, {second, true}, {third, false}} {
		cs := tb.state(t, c.addr)
		if cs.NegotiatedProtocol != "http/1.1" || cs.ServerName != "localhost" || cs.Version != tls.VersionTLS13 {
			t.Errorf("connection %s: ALPN %q, SNI %q, %s", c.addr, cs.NegotiatedProtocol, cs.ServerName, tls.VersionName(cs.Version))
		}
		if cs.DidResume != c.resumed {
			t.Errorf("connection %s: resumed %v, want %v", c.addr, cs.DidResume, c.resumed)
		}
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues("localhost:"+port, "new")); got != 3 {
		t.Errorf("connections opened = %v, want 3", got)
	}
	entries := logged(logs, "upstream connection opened")
	if len(entries) != 3 {
		t.Fatalf("%d connections logged, want 3", len(entries))
	}
	for i, e := range entries {
		resumed, _ := e.ContextMap()["tls_resumed"].(bool)
		if field(e, "tls") != "TLS 1.3" || resumed != (i == 1) {
			t.Errorf("log line %d: tls %q, resumed %v", i, field(e, "tls"), resumed)
		}
	}
}

// TestTLSVerification: a backend whose certificate does not verify is a
// failed dial (nothing was sent) with the reason: an unknown authority, a
// name the certificate does not hold, an expired or not yet valid
// certificate. tls_insecure_skip_verify takes any of them, and says so in
// the log.
func TestTLSVerification(t *testing.T) {
	dir := t.TempDir()
	ca, rogue := tlstest.NewCA(t, dir, "backend-ca"), tlstest.NewCA(t, dir, "rogue-ca")
	now := time.Now()
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		reason string
	}{
		{"unknown authority", rogue.IssueServer(t, "127.0.0.1"), "unknown_authority"},
		{"name mismatch", ca.IssueServer(t, "other.example"), "name_mismatch"},
		{"expired", ca.IssueServerValid(t, now.Add(-48*time.Hour), now.Add(-24*time.Hour), "127.0.0.1"), "expired"},
		{"not yet valid", ca.IssueServerValid(t, now.Add(24*time.Hour), now.Add(48*time.Hour), "127.0.0.1"), "not_yet_valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTLSBackend(t, tc.cert, nil, nil)
			p, m := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool()}})
			l := p.Lease(1, nil)
			defer l.Close()
			_, err := tryGet(t, context.Background(), l, "/")
			de, ok := errors.AsType[*DialError](err)
			if !ok {
				t.Fatalf("err = %v, want a DialError", err)
			}
			te, ok := errors.AsType[*TLSError](err)
			if !ok || te.Reason != tc.reason {
				t.Fatalf("err = %v, want a TLSError for %s", err, tc.reason)
			}
			if de.Timeout() {
				t.Error("a verification failure counts as a timeout")
			}
			if got := testutil.ToFloat64(m.TLSHandshakeFailures.WithLabelValues(tb.addr(), tc.reason)); got != 1 {
				t.Errorf("handshake failures = %v, want 1", got)
			}
			if got := testutil.ToFloat64(m.DialErrors.WithLabelValues(tb.addr())); got != 1 {
				t.Errorf("dial errors = %v, want 1", got)
			}
			if n := len(tb.conns()); n != 0 {
				t.Errorf("the backend got %d requests", n)
			}

			insecure, _, logs := newObservedPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{InsecureSkipVerify: true}})
			if n := len(logged(logs, "upstream TLS certificates are not verified: anyone on the path to the backends can read and change the traffic")); n != 1 {
				t.Errorf("%d warnings about skipping verification, want 1", n)
			}
			il := insecure.Lease(2, nil)
			defer il.Close()
			if got := get(t, il, "/"); !strings.HasPrefix(got, "ok ") {
				t.Fatalf("with verification off: %q", got)
			}
		})
	}
}

// TestTLSServerName: a server name of the configuration's is sent as SNI
// to a backend dialled by IP address and is the name its certificate must
// hold.
func TestTLSServerName(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	tb := newTLSBackend(t, ca.IssueServer(t, "app.internal"), nil, nil)
	p, _ := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool(), ServerName: "app.internal"}})
	l := p.Lease(1, nil)
	defer l.Close()
	addr := strings.TrimPrefix(get(t, l, "/"), "ok ")
	if sni := tb.state(t, addr).ServerName; sni != "app.internal" {
		t.Fatalf("backend saw SNI %q", sni)
	}

	// Without it, the IP address is checked against the certificate, and
	// no SNI goes out.
	plain, _ := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool()}})
	pl := plain.Lease(2, nil)
	defer pl.Close()
	if _, err := tryGet(t, context.Background(), pl, "/"); !isTLSReason(err, "name_mismatch") {
		t.Fatalf("by IP address: %v, want a name mismatch", err)
	}
}

func isTLSReason(err error, reason string) bool {
	te, ok := errors.AsType[*TLSError](err)
	return ok && te.Reason == reason
}

// TestTLSClientCertificate: a backend that requires a client certificate
// gets the pool's, on every connection; without one it refuses the
// request.
func TestTLSClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, clients := tlstest.NewCA(t, dir, "backend-ca"), tlstest.NewCA(t, dir, "client-ca")
	tb := newTLSBackend(t, ca.IssueServer(t, "127.0.0.1"), clients.Pool(), nil)

	p, _ := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{
		RootCAs:      ca.Pool(),
		Certificates: []tls.Certificate{clients.IssueClient(t, "roamgate")},
	}})
	l := p.Lease(1, nil)
	defer l.Close()
	addr := strings.TrimPrefix(get(t, l, "/"), "ok ")
	if peers := tb.state(t, addr).PeerCertificates; len(peers) == 0 || peers[0].Subject.CommonName != "roamgate" {
		t.Fatalf("backend saw client certificates %v", peers)
	}

	without, _ := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool()}})
	wl := without.Lease(2, nil)
	defer wl.Close()
	// TLS 1.3: the client's handshake is done before the backend checks
	// its certificate, so the refusal (an alert) ends the first exchange.
	if _, err := tryGet(t, context.Background(), wl, "/"); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("without a client certificate: %v", err)
	}
}

// TestTLSHealthCheck: active health checks speak TLS to the backend (never
// on a session's connection, never resuming), and a backend whose
// certificate does not verify fails them, with the reason in the log.
func TestTLSHealthCheck(t *testing.T) {
	dir := t.TempDir()
	ca, rogue := tlstest.NewCA(t, dir, "backend-ca"), tlstest.NewCA(t, dir, "rogue-ca")
	var mu sync.Mutex
	var checks []*tls.ConnectionState
	health := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			mu.Lock()
			checks = append(checks, r.TLS)
			mu.Unlock()
		}
	}
	good := newTLSBackend(t, ca.IssueServer(t, "127.0.0.1"), nil, health)
	bad := newTLSBackend(t, rogue.IssueServer(t, "127.0.0.1"), nil, health)
	p, m, logs := newObservedPool(t, Config{
		Backends: []string{good.addr(), bad.addr()},
		TLS:      &TLS{RootCAs: ca.Pool()},
		Health:   ActiveHealth{URI: "/healthz"},
	})
	p.checkOnce(context.Background())
	p.checkOnce(context.Background())

	mu.Lock()
	defer mu.Unlock()
	if len(checks) != 2 {
		t.Fatalf("%d checks reached a backend, want 2 (the good one's)", len(checks))
	}
	for i, cs := range checks {
		if cs == nil || cs.NegotiatedProtocol != "http/1.1" || cs.DidResume {
			t.Fatalf("check %d: TLS state %+v", i, cs)
		}
	}
	if !p.Backends()[0].Healthy() || p.Backends()[1].Healthy() {
		t.Fatalf("healthy: good %v, bad %v", p.Backends()[0].Healthy(), p.Backends()[1].Healthy())
	}
	e := logged(logs, "backend unhealthy")
	if len(e) != 1 || field(e[0], "backend") != bad.addr() || !strings.Contains(field(e[0], "reason"), "unknown_authority") {
		t.Fatalf("unhealthy log lines: %v", e)
	}
	if got := testutil.ToFloat64(m.TLSHandshakeFailures.WithLabelValues(bad.addr(), "unknown_authority")); got != 2 {
		t.Fatalf("handshake failures = %v, want 2", got)
	}
}

// TestTLSHandshakeTimeout: a backend that accepts the connection and never
// answers the handshake fails it within DialTimeout, as a timeout.
func TestTLSHandshakeTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held sync.WaitGroup
	held.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c) // until the client gives up
		c.Close()
	})
	defer held.Wait()

	p, m := newPool(t, Config{Backends: []string{ln.Addr().String()}, DialTimeout: 100 * time.Millisecond, TLS: &TLS{}})
	l := p.Lease(1, nil)
	defer l.Close()
	_, err = tryGet(t, context.Background(), l, "/")
	de, ok := errors.AsType[*DialError](err)
	if !ok || !de.Timeout() || !isTLSReason(err, "timeout") {
		t.Fatalf("err = %v, want a timed-out dial", err)
	}
	if got := testutil.ToFloat64(m.TLSHandshakeFailures.WithLabelValues(ln.Addr().String(), "timeout")); got != 1 {
		t.Fatalf("handshake failures = %v, want 1", got)
	}
}

// TestTLSIdleCloseDetected: a backend that closes an idle TLS connection
// (close_notify, then FIN) is noticed before the next request uses it, so
// a POST, which is never replayed, goes out on a fresh connection. The
// liveness check peeked at the TLS connection, not at its socket, before:
// it saw no socket and took every TLS connection for alive, and the POST
// failed on the dead one.
func TestTLSIdleCloseDetected(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	tb := newTLSBackend(t, ca.IssueServer(t, "127.0.0.1"), nil, nil, func(s *http.Server) { s.IdleTimeout = 100 * time.Millisecond })
	p, m := newPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool()}})
	l := p.Lease(1, nil)
	defer l.Close()
	first := strings.TrimPrefix(get(t, l, "/"), "ok ")
	eventually(t, "the backend closing the idle connection", func() bool { return tb.isClosed(first) })

	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/", io.NopCloser(strings.NewReader("x")), 1))
	if err != nil {
		t.Fatalf("POST after the backend closed the idle connection: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := strings.TrimPrefix(string(body), "ok "); got == first {
		t.Fatalf("POST on the closed connection %s", got)
	}
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(tb.addr(), reasonBackendClosed)); got != 1 {
		t.Fatalf("closed by the backend = %v, want 1", got)
	}
}

// TestTLSUpgrade: a dedicated connection (WebSocket) to an https backend
// is TLS too, resumes the lease's TLS session, and half-closes with a
// close_notify: the backend reads to EOF and still answers.
func TestTLSUpgrade(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	tb := newTLSBackend(t, ca.IssueServer(t, "127.0.0.1"), nil, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "ok "+r.RemoteAddr)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		if _, ok := c.(*tls.Conn); !ok {
			fmt.Fprintf(brw, "HTTP/1.1 500 Not TLS\r\nContent-Length: 0\r\n\r\n")
			brw.Flush()
			return
		}
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		got, err := io.ReadAll(brw) // to the client's close_notify
		if err != nil {
			return
		}
		brw.WriteString("got " + string(got))
		brw.Flush()
	})
	p, _, logs := newObservedPool(t, Config{Backends: []string{tb.addr()}, TLS: &TLS{RootCAs: ca.Pool()}})
	l := p.Lease(1, nil)
	defer l.Close()
	get(t, l, "/") // a session's first connection: its TLS session to resume

	req := newReq(t, context.Background(), http.MethodGet, "/ws", nil, 0)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test")
	resp, d, err := l.Upgrade(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	defer d.Close()
	if _, err := io.WriteString(d, "hello"); err != nil {
		t.Fatal(err)
	}
	if err := d.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(bufio.NewReader(d))
	if err != nil || string(got) != "got hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	e := logged(logs, "dedicated upstream connection opened")
	if len(e) != 1 || field(e[0], "tls") != "TLS 1.3" || e[0].ContextMap()["tls_resumed"] != true {
		t.Fatalf("dedicated connection log lines: %v", e)
	}
}

// TestTLSConfigChecks: TLS over a Unix socket is refused when the pool is
// made.
func TestTLSConfigChecks(t *testing.T) {
	if _, err := New(Config{Backends: []string{UnixPrefix + "/run/app.sock"}, TLS: &TLS{}}, nil, nil); err == nil ||
		!strings.Contains(err.Error(), "TLS over a Unix socket is not supported") {
		t.Fatalf("err = %v", err)
	}
}
