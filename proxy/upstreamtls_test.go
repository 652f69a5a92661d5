package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

// tlsSeen is what an HTTPS legacy app saw of a request: the app's view and
// the TLS of the connection it came on.
type tlsSeen struct {
	legacyapp.Request
	TLS      string `json:"tls"` // version; "" over plain TCP
	ALPN     string `json:"alpn"`
	SNI      string `json:"sni"`
	Resumed  bool   `json:"resumed"`
	ClientCN string `json:"client_cn"` // the client certificate's common name
}

// startTLSApp starts a legacy app on loopback that speaks HTTPS with cert
// (preferring h2 in ALPN, as most servers do), requiring a client
// certificate of clientCAs when set. "/" answers a tlsSeen, "/big" a
// bigBody, anything else goes to h (nil: 404). It returns the app and its
// https:// upstream.
func startTLSApp(t testing.TB, cert tls.Certificate, clientCAs *x509.CertPool, h http.Handler) (*legacyapp.App, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	if clientCAs != nil {
		conf.ClientCAs, conf.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s := tlsSeen{Request: legacyapp.Seen(r.Context())}
		if cs := r.TLS; cs != nil {
			s.TLS, s.ALPN, s.SNI, s.Resumed = tls.VersionName(cs.Version), cs.NegotiatedProtocol, cs.ServerName, cs.DidResume
			if len(cs.PeerCertificates) > 0 {
				s.ClientCN = cs.PeerCertificates[0].Subject.CommonName
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	})
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "not TLS", http.StatusInternalServerError)
			return
		}
		bigBody(w, r)
	})
	if h != nil {
		mux.Handle("/", h)
	}
	a := legacyapp.Serve(tls.NewListener(ln, conf), "app", mux)
	t.Cleanup(func() { a.Close() })
	return a, "https://" + ln.Addr().String()
}

// seenTLS does a GET of the HTTPS app's "/" through the proxy.
func seenTLS(t *testing.T, c *h3client.Conn, h *harness, client string) tlsSeen {
	t.Helper()
	resp, body := do(t, c, "GET", "https://localhost:"+itoa(h.port)+"/", nil, map[string]string{"X-Client": client})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %s", resp.StatusCode, body)
	}
	var s tlsSeen
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return s
}

// TestUpstreamTLS: reverse_proxy https:// speaks TLS 1.3 and HTTP/1.1 to
// the backend, verifying its certificate against tls_ca (the backend is
// named by IP address: no SNI, and the address is in its certificate). A
// client's requests, before and after it migrates, go over its one
// upstream TLS connection; another client gets its own, which does not
// resume the first one's TLS session.
func TestUpstreamTLS(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	app, upstream := startTLSApp(t, ca.IssueServer(t, "127.0.0.1"), nil, nil)
	h := startProxy(t, siteFor(" {\n\t\ttls_ca "+ca.File+"\n\t}", upstream), nil)
	c := h.dial(t)
	start := c.LocalAddr()

	var seen []tlsSeen
	for range 3 {
		seen = append(seen, seenTLS(t, c, h, "c1"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		seen = append(seen, seenTLS(t, c, h, "c1"))
	}
	var reqs []legacyapp.Request
	for i, s := range seen {
		if s.TLS != "TLS 1.3" || s.ALPN != "http/1.1" || s.SNI != "" || s.Resumed {
			t.Fatalf("request %d: the backend saw %+v", i, s)
		}
		reqs = append(reqs, s.Request)
	}
	checkSameView(t, reqs, start.Port)

	other := seenTLS(t, h.dial(t), h, "c2")
	if other.Conn == seen[0].Conn || other.Resumed {
		t.Fatalf("second client on connection %d (first on %d), resumed %v", other.Conn, seen[0].Conn, other.Resumed)
	}
	if n := len(app.Requests()); n != 7 {
		t.Fatalf("backend saw %d requests, want 7", n)
	}
	addr := strings.TrimPrefix(upstream, "https://")
	if got := counterSum(t, h.reg, "roamgate_upstream_conns_opened_total", map[string]string{"backend": addr}); got != 2 {
		t.Fatalf("upstream connections opened = %v, want 2", got)
	}
	for _, e := range h.logged("upstream connection opened") {
		if e.ContextMap()["tls"] != "TLS 1.3" {
			t.Fatalf("connection log line %v", e.ContextMap())
		}
	}
}

// TestUpstreamTLSConcurrentSessions: over TLS too, clients that keep c
// requests in flight and migrate once hold at most c upstream connections
// each, never share one, and keep their set across the migration.
func TestUpstreamTLSConcurrentSessions(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	for _, c := range []int{1, 4} {
		t.Run(strconv.Itoa(c), func(t *testing.T) {
			const clients = 3
			app, upstream := startTLSApp(t, ca.IssueServer(t, "127.0.0.1"), nil, nil)
			h := startProxy(t, siteFor(" {\n\t\ttls_ca "+ca.File+"\n\t}", upstream), nil)
			base := "https://localhost:" + strconv.Itoa(h.port)
			conns := make([]*h3client.Conn, clients)
			for i := range conns {
				conns[i] = h.dial(t)
			}
			runClients(t, conns, c, 400*time.Millisecond, func(ctx context.Context, conn *h3client.Conn, label string, _ int) error {
				req, err := http.NewRequestWithContext(ctx, "GET", base+"/big", nil)
				if err != nil {
					return err
				}
				req.Header.Set("X-Client", label)
				resp, err := conn.RoundTrip(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				n, err := bufio.NewReader(resp.Body).Discard(bigBodySize + 1)
				if resp.StatusCode != http.StatusOK || n != bigBodySize {
					return &statusBodyError{resp.StatusCode, n, err}
				}
				return nil
			})
			checkSets(t, h, app.Requests(), clients, c)
		})
	}
}

type statusBodyError struct {
	status, n int
	err       error
}

func (e *statusBodyError) Error() string {
	return "status " + strconv.Itoa(e.status) + ", " + strconv.Itoa(e.n) + " body bytes (" + e.err.Error() + ")"
}

// TestUpstreamTLSVerificationFails: a backend whose certificate does not
// verify gets the client a 502, with the reason in the log line; the
// backend sees no request.
func TestUpstreamTLSVerificationFails(t *testing.T) {
	dir := t.TempDir()
	ca, rogue := tlstest.NewCA(t, dir, "backend-ca"), tlstest.NewCA(t, dir, "rogue-ca")
	now := time.Now()
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		extra  string
		reason string
		says   string
	}{
		{"unknown authority", rogue.IssueServer(t, "127.0.0.1"), "", "unknown_authority", "certificate signed by unknown authority"},
		{"name mismatch", ca.IssueServer(t, "other.internal"), "\n\t\ttls_server_name app.internal", "name_mismatch", "certificate is valid for other.internal, not app.internal"},
		{"expired", ca.IssueServerValid(t, now.Add(-48*time.Hour), now.Add(-time.Hour), "127.0.0.1"), "", "expired", "certificate has expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, upstream := startTLSApp(t, tc.cert, nil, nil)
			h := startProxy(t, siteFor(" {\n\t\ttls_ca "+ca.File+tc.extra+"\n\t}", upstream), nil)
			c := h.dial(t)
			for range 2 {
				resp, body := do(t, c, "GET", "https://localhost:"+itoa(h.port)+"/", nil, nil)
				if resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("status %d %q, want 502", resp.StatusCode, body)
				}
			}
			if n := len(app.Requests()); n != 0 {
				t.Fatalf("the backend saw %d requests", n)
			}
			entries := h.logged("upstream request failed")
			if len(entries) != 2 {
				t.Fatalf("%d failure log lines, want 2", len(entries))
			}
			f := entries[0].ContextMap()
			if f["tls_failure"] != tc.reason || !strings.Contains(f["error"].(string), tc.says) || f["status"] != int64(http.StatusBadGateway) {
				t.Fatalf("log line %v, want tls_failure %s and %q", f, tc.reason, tc.says)
			}
		})
	}
}

// TestUpstreamTLSServerNameAndClientCert: tls_server_name is the SNI the
// backend sees and the name its certificate is checked for, and
// tls_client_certificate is the certificate it gets asked for (mutual
// TLS).
func TestUpstreamTLSServerNameAndClientCert(t *testing.T) {
	dir := t.TempDir()
	ca, clients := tlstest.NewCA(t, dir, "backend-ca"), tlstest.NewCA(t, dir, "clients-ca")
	certFile, keyFile := tlstest.WriteKeyPair(t, dir, "roamgate", clients.IssueClient(t, "roamgate"))
	_, upstream := startTLSApp(t, ca.IssueServer(t, "app.internal"), clients.Pool(), nil)
	h := startProxy(t, siteFor(" {\n\t\ttls_ca "+ca.File+"\n\t\ttls_server_name app.internal\n\t\ttls_client_certificate "+
		certFile+" "+keyFile+"\n\t}", upstream), nil)
	s := seenTLS(t, h.dial(t), h, "c1")
	if s.SNI != "app.internal" || s.ClientCN != "roamgate" {
		t.Fatalf("the backend saw SNI %q, client certificate %q", s.SNI, s.ClientCN)
	}
}

// TestUpstreamTLSWebSocket: an RFC 9220 WebSocket to an https:// upstream
// goes over a dedicated TLS connection, and survives a migration.
func TestUpstreamTLSWebSocket(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	echo := &wsEcho{}
	app, upstream := startTLSApp(t, ca.IssueServer(t, "127.0.0.1"), nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "not TLS", http.StatusInternalServerError)
			return
		}
		echo.ServeHTTP(w, r)
	}))
	h := startProxy(t, siteFor(" {\n\t\ttls_ca "+ca.File+"\n\t}", upstream), nil)
	c := h.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := c.WebSocket(ctx, "https://localhost:"+strconv.Itoa(h.port)+"/chat", http.Header{"Sec-Websocket-Protocol": {"chat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	br := bufio.NewReader(ws)
	for i := range 6 {
		if i == 3 {
			if err := c.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
		}
		msg := "message " + strconv.Itoa(i)
		if err := wsWrite(ws, opText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if op, got, err := wsRead(br); err != nil || op != opText || string(got) != msg {
			t.Fatalf("message %d: op %d %q %v", i, op, got, err)
		}
	}
	wsWrite(ws, opClose, []byte{0x03, 0xe8})
	if op, _, err := wsRead(br); err != nil || op != opClose {
		t.Fatalf("close: op %d, %v", op, err)
	}
	eventually(t, "the backend's conversation to end", func() bool { return echo.ended.Load() == 1 })
	if reqs := app.Requests(); len(reqs) != 1 {
		t.Fatalf("backend saw %d requests, want the one upgrade", len(reqs))
	}
	e := h.logged("dedicated upstream connection opened")
	if len(e) != 1 || e[0].ContextMap()["tls"] != "TLS 1.3" {
		t.Fatalf("dedicated connection log lines %v", e)
	}
}
