package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

// clientPKI is a client CA, written to a PEM file, and a client
// certificate it signed.
type clientPKI struct {
	caFile string
	ca     *x509.Certificate
	leaf   tls.Certificate // with its key, for a tls.Config
}

// newClientPKI creates a client CA named name in dir, and a client
// certificate for "client of NAME".
func newClientPKI(t *testing.T, dir, name string) clientPKI {
	t.Helper()
	ca := tlstest.NewCA(t, dir, name)
	return clientPKI{caFile: ca.File, ca: ca.Cert, leaf: ca.IssueClient(t, "client of "+name)}
}

// mtlsEnv is a started Manager with a site mtls.internal that requires
// client certificates from good's CA, a site open.internal that does not,
// and a client certificate from another CA (bad).
type mtlsEnv struct {
	m         *Manager
	good, bad clientPKI
}

func newMTLSEnv(t *testing.T) *mtlsEnv {
	t.Helper()
	dir := t.TempDir()
	e := &mtlsEnv{good: newClientPKI(t, dir, "clients-ca"), bad: newClientPKI(t, dir, "other-ca")}
	e.m = startTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{Names: []string{"mtls.internal"}, ClientCAFiles: []string{e.good.caFile}},
			{Names: []string{"open.internal"}},
		},
	})
	return e
}

// clientConfig returns a client config for serverName that trusts the
// manager's local CA and presents cert, if any, when asked for one.
func (e *mtlsEnv) clientConfig(serverName string, nextProtos []string, cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, RootCAs: e.m.LocalCA().RootPool(), NextProtos: nextProtos}
	withClientCert(cfg, cert)
	return cfg
}

// withClientCert makes cfg present cert, if not nil, when the server asks
// for a certificate, even one of a CA that the server does not name in
// its request (Go's client would otherwise send none).
func withClientCert(cfg *tls.Config, cert *tls.Certificate) {
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
}

// serverSide is the outcome of one handshake on the server.
type serverSide struct {
	state tls.ConnectionState
	err   error
}

// serveTLSStates runs a TLS server with cfg on 127.0.0.1 (see serveStates).
func serveTLSStates(t *testing.T, cfg *tls.Config) (string, <-chan serverSide) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return serveStates(t, ln)
}

// serveStates completes one TLS handshake per connection of ln, sends its
// outcome on the returned channel (dropped when 64 are unread), writes
// "ok" after a good one (so that a TLS 1.3 client learns whether its
// certificate was taken) and hangs up. It returns ln's address.
func serveStates(t *testing.T, ln net.Listener) (string, <-chan serverSide) {
	t.Helper()
	results := make(chan serverSide, 64)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				tc := conn.(*tls.Conn)
				err := tc.Handshake()
				select {
				case results <- serverSide{tc.ConnectionState(), err}:
				default:
				}
				if err == nil {
					_, _ = tc.Write([]byte("ok"))
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		exited := make(chan struct{})
		go func() { wg.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(time.Second):
			t.Error("tls server did not exit within 1s of closing its listener")
		}
	})
	return ln.Addr().String(), results
}

// dialTLS completes a handshake with addr and reads the server's "ok": in
// TLS 1.3 the server refuses a client certificate after the client's side
// of the handshake is done.
func dialTLS(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 2)); err != nil {
		return tls.ConnectionState{}, err
	}
	return conn.ConnectionState(), nil
}

func receive(t *testing.T, results <-chan serverSide) serverSide {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no handshake on the server within 5s")
		return serverSide{}
	}
}

// TestClientAuthTCP completes handshakes with TLSConfig over TCP: the
// mtls site takes only a client certificate from its CA, and the server
// sees the verified chain; the open site asks for none.
func TestClientAuthTCP(t *testing.T) {
	e := newMTLSEnv(t)
	addr, results := serveTLSStates(t, e.m.TLSConfig())

	tests := []struct {
		name       string
		serverName string
		cert       *tls.Certificate
		maxVersion uint16
		wantErr    string // in the server's handshake error; "" for success
	}{
		{"no certificate", "mtls.internal", nil, 0, "client didn't provide a certificate"},
		{"no certificate, TLS 1.2", "mtls.internal", nil, tls.VersionTLS12, "client didn't provide a certificate"},
		{"certificate from another CA", "mtls.internal", &e.bad.leaf, 0, "certificate signed by unknown authority"},
		{"certificate from another CA, TLS 1.2", "mtls.internal", &e.bad.leaf, tls.VersionTLS12, "certificate signed by unknown authority"},
		{"good certificate", "mtls.internal", &e.good.leaf, 0, ""},
		{"good certificate, TLS 1.2", "mtls.internal", &e.good.leaf, tls.VersionTLS12, ""},
		{"SNI in another case, with a trailing dot", "MTLS.Internal.", nil, 0, "client didn't provide a certificate"},
		{"open site, no certificate", "open.internal", nil, 0, ""},
		{"open site, a certificate at hand", "open.internal", &e.good.leaf, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.clientConfig(tt.serverName, []string{"h2", "http/1.1"}, tt.cert)
			cfg.MaxVersion = tt.maxVersion
			if strings.HasSuffix(tt.serverName, ".") {
				// Go's client sends no trailing dot; verify what it can.
				cfg.ServerName = "mtls.internal"
			}
			st, clientErr := dialTLS(addr, cfg)
			srv := receive(t, results)
			if tt.wantErr != "" {
				if clientErr == nil {
					t.Errorf("client: handshake and read succeeded, want an error")
				}
				if srv.err == nil || !strings.Contains(srv.err.Error(), tt.wantErr) {
					t.Errorf("server handshake error = %v, want one containing %q", srv.err, tt.wantErr)
				}
				return
			}
			if clientErr != nil || srv.err != nil {
				t.Fatalf("client error %v, server error %v; want none", clientErr, srv.err)
			}
			if st.NegotiatedProtocol != "h2" || srv.state.NegotiatedProtocol != "h2" {
				t.Errorf("ALPN client %q, server %q; want h2", st.NegotiatedProtocol, srv.state.NegotiatedProtocol)
			}
			if tt.maxVersion != 0 && st.Version != tt.maxVersion {
				t.Errorf("version %#x, want %#x", st.Version, tt.maxVersion)
			}
			if tt.serverName == "open.internal" {
				if len(srv.state.PeerCertificates) != 0 {
					t.Errorf("open site got %d client certificates, want none asked for", len(srv.state.PeerCertificates))
				}
				return
			}
			if len(srv.state.VerifiedChains) != 1 {
				t.Fatalf("server has %d verified chains, want 1", len(srv.state.VerifiedChains))
			}
			chain := srv.state.VerifiedChains[0]
			if len(chain) != 2 || !chain[0].Equal(leafOf(t, *tt.cert)) || !chain[1].Equal(e.good.ca) {
				t.Errorf("verified chain %v, want the client certificate and its CA", subjects(chain))
			}
			if err := e.m.VerifyClientCert([]string{e.good.caFile}, &srv.state); err != nil {
				t.Errorf("VerifyClientCert of the handshake's state: %v", err)
			}
		})
	}
}

// TestClientAuthQUIC completes QUIC handshakes with QUICTLSConfig, as is
// and wrapped by http3.ConfigureTLSConfig (as http3.Server does): the
// client-auth config keeps h3 and TLS 1.3.
func TestClientAuthQUIC(t *testing.T) {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	e := newMTLSEnv(t)
	for _, wrap := range []struct {
		name string
		fn   func(*tls.Config) *tls.Config
	}{
		{"quic", func(c *tls.Config) *tls.Config { return c }},
		{"http3.ConfigureTLSConfig", http3.ConfigureTLSConfig},
	} {
		t.Run(wrap.name, func(t *testing.T) {
			serverUDP, accepted := serveQUIC(t, wrap.fn(e.m.QUICTLSConfig()))
			for _, tt := range []struct {
				name       string
				serverName string
				cert       *tls.Certificate
				want       bool // the handshake succeeds
			}{
				{"no certificate", "mtls.internal", nil, false},
				{"certificate from another CA", "mtls.internal", &e.bad.leaf, false},
				{"good certificate", "mtls.internal", &e.good.leaf, true},
				{"open site", "open.internal", nil, true},
			} {
				t.Run(tt.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					clientTr := &quic.Transport{Conn: listenUDP(t)}
					t.Cleanup(func() { _ = clientTr.Close() })
					conn, err := clientTr.Dial(ctx, serverUDP.LocalAddr(), e.clientConfig(tt.serverName, []string{"h3"}, tt.cert), nil)
					if !tt.want {
						if err == nil {
							// The client's side of a TLS 1.3 handshake ends
							// before the server has checked its certificate.
							defer conn.CloseWithError(0, "")
							select {
							case <-conn.Context().Done():
								err = context.Cause(conn.Context())
							case <-ctx.Done():
								t.Fatal("connection still open 5s after a refused handshake")
							}
						}
						if te, ok := errors.AsType[*quic.TransportError](err); !ok || !te.ErrorCode.IsCryptoError() {
							t.Errorf("client error %v, want a TLS alert", err)
						}
						select {
						case sc := <-accepted:
							t.Errorf("server accepted a connection with client certificates %v", subjects(sc.ConnectionState().TLS.PeerCertificates))
						default:
						}
						return
					}
					if err != nil {
						t.Fatalf("quic dial: %v", err)
					}
					defer conn.CloseWithError(0, "")
					var sc *quic.Conn
					select {
					case sc = <-accepted:
					case <-ctx.Done():
						t.Fatal("server accepted no connection within 5s")
					}
					defer sc.CloseWithError(0, "")
					st := sc.ConnectionState().TLS
					if st.NegotiatedProtocol != "h3" || st.Version != tls.VersionTLS13 {
						t.Errorf("server negotiated %q over %#x, want h3 over TLS 1.3", st.NegotiatedProtocol, st.Version)
					}
					if tt.cert == nil {
						if len(st.PeerCertificates) != 0 {
							t.Errorf("open site got client certificates")
						}
						return
					}
					if len(st.VerifiedChains) != 1 || !st.VerifiedChains[0][len(st.VerifiedChains[0])-1].Equal(e.good.ca) {
						t.Errorf("server verified chains %d, want one to the client CA", len(st.VerifiedChains))
					}
				})
			}
		})
	}
}

// serveQUIC listens for QUIC on 127.0.0.1 with cfg and delivers the
// connections whose handshakes complete.
func serveQUIC(t *testing.T, cfg *tls.Config) (*net.UDPConn, <-chan *quic.Conn) {
	t.Helper()
	serverUDP := listenUDP(t)
	tr := &quic.Transport{Conn: serverUDP}
	ln, err := tr.Listen(cfg, nil)
	if err != nil {
		t.Fatalf("quic listen: %v", err)
	}
	accepted := make(chan *quic.Conn, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			accepted <- conn
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		_ = tr.Close()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Error("quic listener did not exit within 1s of Close")
		}
	})
	return serverUDP, accepted
}

// TestClientAuthRouting checks which handshakes GetConfigForClient asks
// for a client certificate, and the configs it returns.
func TestClientAuthRouting(t *testing.T) {
	dir := t.TempDir()
	a, b := newClientPKI(t, dir, "a"), newClientPKI(t, dir, "b")
	m := newTestManager(t, Config{
		DataDir:           t.TempDir(),
		DefaultServerName: "default.internal",
		Sites: []Site{
			{Names: []string{"*.svc.internal", "10.1.2.3"}, ClientCAFiles: []string{a.caFile}},
			{Names: []string{"open.svc.internal", "10.1.2.4"}},
			{Names: []string{"default.internal", "bücher.internal"}, ClientCAFiles: []string{b.caFile, a.caFile, b.caFile}},
		},
	})
	tcp, q := m.TLSConfig(), m.QUICTLSConfig()
	poolA := m.plan().clientCAs[clientCAsKey([]string{a.caFile})].pool
	poolAB := m.plan().clientCAs[clientCAsKey([]string{a.caFile, b.caFile})].pool
	if poolA == nil || poolAB == nil || len(m.plan().clientCAs) != 2 {
		t.Fatalf("pools %v, want one per set of files", m.plan().clientCAs)
	}
	tests := []struct {
		name  string
		hello *tls.ClientHelloInfo
		want  *x509.CertPool // nil: the base config
	}{
		{"wildcard", &tls.ClientHelloInfo{ServerName: "api.svc.internal"}, poolA},
		{"wildcard, other case", &tls.ClientHelloInfo{ServerName: "API.Svc.Internal"}, poolA},
		{"exact name before the wildcard", &tls.ClientHelloInfo{ServerName: "open.svc.internal"}, nil},
		{"two labels below the wildcard", &tls.ClientHelloInfo{ServerName: "a.b.svc.internal"}, nil},
		{"unicode name", &tls.ClientHelloInfo{ServerName: "bücher.internal"}, poolAB},
		{"punycode name", &tls.ClientHelloInfo{ServerName: "xn--bcher-kva.internal"}, poolAB},
		{"unknown name", &tls.ClientHelloInfo{ServerName: "other.internal"}, nil},
		{"IP address SNI", &tls.ClientHelloInfo{ServerName: "10.1.2.3"}, poolA},
		{"no SNI, to a client-auth IP", &tls.ClientHelloInfo{Conn: fakeConn{local: "10.1.2.3:443"}}, poolA},
		{"no SNI, to an open IP", &tls.ClientHelloInfo{Conn: fakeConn{local: "10.1.2.4:443"}}, nil},
		{"no SNI, IPv4-mapped", &tls.ClientHelloInfo{Conn: fakeConn{local: "[::ffff:10.1.2.3]:443"}}, poolA},
		{"no SNI, to another IP: the default name", &tls.ClientHelloInfo{Conn: fakeConn{local: "127.0.0.1:443"}}, poolAB},
		{"no SNI, no connection: the default name", &tls.ClientHelloInfo{}, poolAB},
		{"TLS-ALPN-01 challenge", &tls.ClientHelloInfo{ServerName: "api.svc.internal", SupportedProtos: []string{"acme-tls/1"}}, nil},
		{"acme-tls/1 among others", &tls.ClientHelloInfo{ServerName: "api.svc.internal", SupportedProtos: []string{"acme-tls/1", "h2"}}, poolA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tcp.GetConfigForClient(tt.hello)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if got != nil {
					t.Fatalf("got a config with ClientAuth %v, want the base config (nil)", got.ClientAuth)
				}
				return
			}
			if got == nil || got.ClientAuth != tls.RequireAndVerifyClientCert || got.ClientCAs != tt.want {
				t.Fatalf("got %+v, want RequireAndVerifyClientCert with the site's pool", got)
			}
			if !slices.Equal(got.NextProtos, tcp.NextProtos) || got.MinVersion != tls.VersionTLS12 || got.GetCertificate == nil || got.GetConfigForClient != nil {
				t.Errorf("config ALPN %q, min version %#x, GetCertificate set %v, GetConfigForClient set %v; want the base's, and no GetConfigForClient",
					got.NextProtos, got.MinVersion, got.GetCertificate != nil, got.GetConfigForClient != nil)
			}
			got.NextProtos[0] = "changed"
			if tcp.NextProtos[0] != "h2" {
				t.Error("the returned config shares NextProtos with the base")
			}
		})
	}

	t.Run("QUIC", func(t *testing.T) {
		got, err := q.GetConfigForClient(&tls.ClientHelloInfo{ServerName: "api.svc.internal", SupportedProtos: []string{"h3"}})
		if err != nil || got == nil || got.ClientCAs != poolA || !slices.Equal(got.NextProtos, []string{"h3"}) || got.MinVersion != tls.VersionTLS13 {
			t.Fatalf("got %+v, %v; want h3, TLS 1.3 and the site's pool", got, err)
		}
		// QUIC offers no acme-tls/1: no challenge to exempt.
		got, _ = q.GetConfigForClient(&tls.ClientHelloInfo{ServerName: "api.svc.internal", SupportedProtos: []string{"acme-tls/1"}})
		if got == nil || got.ClientCAs != poolA {
			t.Errorf("acme-tls/1 over QUIC got %+v, want client authentication", got)
		}
	})
	t.Run("changes before use carry over", func(t *testing.T) {
		c := m.TLSConfig()
		c.MinVersion = tls.VersionTLS13
		c.NextProtos = []string{"http/1.1"}
		got, _ := c.GetConfigForClient(&tls.ClientHelloInfo{ServerName: "api.svc.internal"})
		if got.MinVersion != tls.VersionTLS13 || !slices.Equal(got.NextProtos, []string{"http/1.1"}) {
			t.Errorf("got min version %#x, ALPN %q; want the caller's", got.MinVersion, got.NextProtos)
		}
	})
	// GetConfigForClient is set even without client CAs, as an Update may
	// add some; it keeps the base config.
	t.Run("no client CAs, base config kept", func(t *testing.T) {
		m := newTestManager(t, Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}})
		for _, c := range []*tls.Config{m.TLSConfig(), m.QUICTLSConfig()} {
			if got, err := c.GetConfigForClient(&tls.ClientHelloInfo{ServerName: "localhost"}); got != nil || err != nil {
				t.Errorf("GetConfigForClient = %v, %v without client CAs; want nil, nil", got, err)
			}
		}
	})
}

// TestClientAuthCatchAll checks that a catch-all site with client CAs asks
// every handshake that no other site claims for a certificate, with SNI
// or without, and a real handshake for an unknown name needs one.
func TestClientAuthCatchAll(t *testing.T) {
	dir := t.TempDir()
	pki := newClientPKI(t, dir, "clients")
	m := startTestManager(t, Config{
		DataDir:           t.TempDir(),
		DefaultServerName: "localhost",
		Sites: []Site{
			{Names: []string{"open.internal"}},
			{CatchAll: true, ClientCAFiles: []string{pki.caFile}},
			{Names: []string{"localhost", "127.0.0.1"}, ClientCAFiles: []string{pki.caFile}},
		},
	})
	c := m.TLSConfig()
	for name, want := range map[string]bool{"anything.example": true, "localhost": true, "127.0.0.1": true, "": true, "open.internal": false} {
		got, err := c.GetConfigForClient(&tls.ClientHelloInfo{ServerName: name, Conn: fakeConn{local: "192.0.2.1:443"}})
		if err != nil || (got != nil) != want {
			t.Errorf("SNI %q: client authentication %v (%v), want %v", name, got != nil, err, want)
		}
	}

	addr, results := serveTLSStates(t, c)
	for _, tt := range []struct {
		name string
		cert *tls.Certificate
	}{{"no certificate", nil}, {"good certificate", &pki.leaf}} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool()}
			withClientCert(cfg, tt.cert)
			_, err := dialTLS(addr, cfg)
			srv := receive(t, results)
			if (err == nil) != (tt.cert != nil) || (srv.err == nil) != (tt.cert != nil) {
				t.Errorf("client error %v, server error %v; want success only with the certificate", err, srv.err)
			}
		})
	}
}

// TestVerifyClientCert checks the proxy's per-request check against real
// handshake states: a certificate verified for one site does not pass for
// a site with other CAs.
func TestVerifyClientCert(t *testing.T) {
	dir := t.TempDir()
	a, b := newClientPKI(t, dir, "a"), newClientPKI(t, dir, "b")
	both := filepath.Join(dir, "both.pem")
	writeFile(t, both, slices.Concat(readFile(t, a.caFile), readFile(t, b.caFile)))
	m := startTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{Names: []string{"a.internal"}, ClientCAFiles: []string{a.caFile}},
			{Names: []string{"b.internal"}, ClientCAFiles: []string{b.caFile}},
			{Names: []string{"ab.internal"}, ClientCAFiles: []string{b.caFile, a.caFile}},
			{Names: []string{"both.internal"}, ClientCAFiles: []string{both}},
			{Names: []string{"open.internal"}},
		},
	})
	addr, results := serveTLSStates(t, m.TLSConfig())
	state := func(serverName string, cert *tls.Certificate) *tls.ConnectionState {
		t.Helper()
		cfg := &tls.Config{ServerName: serverName, RootCAs: m.LocalCA().RootPool()}
		withClientCert(cfg, cert)
		if _, err := dialTLS(addr, cfg); err != nil {
			t.Fatalf("handshake for %s: %v", serverName, err)
		}
		srv := receive(t, results)
		return &srv.state
	}
	viaA := state("a.internal", &a.leaf)
	viaB := state("b.internal", &b.leaf)
	viaBoth := state("both.internal", &a.leaf)
	viaOpen := state("open.internal", nil)

	tests := []struct {
		name  string
		files []string
		cs    *tls.ConnectionState
		ok    bool
	}{
		{"same site", []string{a.caFile}, viaA, true},
		{"site without client CAs", nil, viaOpen, true},
		{"another site's CA", []string{b.caFile}, viaA, false},
		{"one of several CAs", []string{a.caFile, b.caFile}, viaB, true},
		{"files in another order, repeated", []string{b.caFile, a.caFile, a.caFile}, viaA, true},
		{"verified through another file with the same CA", []string{a.caFile}, viaBoth, true},
		{"no certificate", []string{a.caFile}, viaOpen, false},
		{"no TLS", []string{a.caFile}, nil, false},
		{"files of no site", []string{filepath.Join(dir, "nope.pem")}, viaA, false},
		{"peer certificates without verified chains", []string{a.caFile}, &tls.ConnectionState{PeerCertificates: viaA.PeerCertificates}, true},
		{"another CA's peer certificates without verified chains", []string{b.caFile}, &tls.ConnectionState{PeerCertificates: viaA.PeerCertificates}, false},
		{"a forged verified chain", []string{b.caFile}, &tls.ConnectionState{PeerCertificates: viaA.PeerCertificates, VerifiedChains: [][]*x509.Certificate{{viaA.PeerCertificates[0], a.ca}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := m.VerifyClientCert(tt.files, tt.cs)
			if tt.ok != (err == nil) {
				t.Fatalf("VerifyClientCert = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrClientCertRequired) {
				t.Errorf("error %v does not wrap ErrClientCertRequired", err)
			}
		})
	}
}

// TestClientCAFileErrors checks that Validate and New read each client CA
// file once and name it in their errors.
func TestClientCAFileErrors(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data") // must not come into being
	good := newClientPKI(t, dir, "good").caFile
	missing := filepath.Join(dir, "missing.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("not a certificate\n"))
	keyOnly := filepath.Join(dir, "key-only.pem")
	_, keyPEM := newKeyPEM(t)
	writeFile(t, keyOnly, keyPEM)
	badDER := filepath.Join(dir, "bad-der.pem")
	writeFile(t, badDER, slices.Concat(readFile(t, good), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})))
	unreadable := filepath.Join(dir, "dir.pem")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		sites []Site
		want  []string // lines of the error
	}{
		{"missing file", []Site{{Source: "Roamfile:3:2: tls", Names: []string{"a.internal"}, ClientCAFiles: []string{missing}}},
			[]string{`Roamfile:3:2: tls: client CA file "` + missing + `": no such file or directory`}},
		{"garbage", []Site{{Names: []string{"a.internal"}, ClientCAFiles: []string{good, garbage}}},
			[]string{`tls site 1: client CA file "` + garbage + `": no certificates found`}},
		{"a key only", []Site{{Names: []string{"a.internal"}, ClientCAFiles: []string{keyOnly}}},
			[]string{`tls site 1: client CA file "` + keyOnly + `": no certificates found`}},
		{"bad certificate", []Site{{Names: []string{"a.internal"}, ClientCAFiles: []string{badDER}}},
			[]string{`tls site 1: client CA file "` + badDER + `": certificate 2: x509: malformed certificate`}},
		{"a directory", []Site{{Names: []string{"a.internal"}, ClientCAFiles: []string{unreadable}}},
			[]string{`tls site 1: client CA file "` + unreadable + `": is a directory`}},
		{"each file once", []Site{
			{Names: []string{"a.internal"}, ClientCAFiles: []string{missing}},
			{Names: []string{"b.internal"}, ClientCAFiles: []string{good, missing}},
			{CertFile: "c.pem", KeyFile: "k.pem", Names: []string{"c.internal"}, ClientCAFiles: []string{garbage}},
		}, []string{
			`tls site 1: client CA file "` + missing + `": no such file or directory`,
			`tls site 3: client CA file "` + garbage + `": no certificates found`,
		}},
		{"names with other client CAs", []Site{
			{Names: []string{"a.internal"}, ClientCAFiles: []string{good}},
			{CertFile: "c.pem", KeyFile: "k.pem", Names: []string{"A.internal", "b.internal"}},
		}, []string{`tls site 2: name "a.internal": client CA files differ from those of tls site 1, which lists it too (one TLS handshake serves both)`}},
		{"catch-all with nothing to do", []Site{{CatchAll: true}},
			[]string{"tls site 1: a catch-all site needs OnDemand (certificates for any name) or ClientCAFiles (client certificates for any name)"}},
		{"two catch-alls", []Site{{CatchAll: true, ClientCAFiles: []string{good}}, {CatchAll: true, CertFile: "c.pem", KeyFile: "k.pem", ClientCAFiles: []string{good}}},
			[]string{"tls site 2: a second catch-all site (tls site 1 is one)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{DataDir: data, Sites: tt.sites}
			verr := Validate(cfg)
			m, nerr := New(cfg, testLogger(t))
			if nerr == nil {
				m.Stop()
			}
			for _, err := range []error{verr, nerr} {
				if err == nil || err.Error() != strings.Join(tt.want, "\n") {
					t.Errorf("error\n got %v\nwant %s", err, strings.Join(tt.want, "\n"))
				}
			}
		})
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("the data directory was created by Validate or a failed New: %v", err)
	}
	for name, cfg := range map[string]Config{
		"files site":             {DataDir: data, Sites: []Site{{CertFile: "c.pem", KeyFile: "k.pem", ClientCAFiles: []string{good}}}},
		"catch-all files site":   {DataDir: data, Sites: []Site{{CatchAll: true, CertFile: "c.pem", KeyFile: "k.pem", ClientCAFiles: []string{good}}}},
		"client-auth catch-all":  {DataDir: data, Sites: []Site{{CatchAll: true, ClientCAFiles: []string{good}}}},
		"on-demand, client-auth": {DataDir: data, OnDemandAsk: "http://127.0.0.1:9/ask", Sites: []Site{{CatchAll: true, OnDemand: true, ClientCAFiles: []string{good}}}},
	} {
		if err := Validate(cfg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// fakeConn is a net.Conn with a local address only, for ClientHelloInfo.
type fakeConn struct {
	net.Conn
	local string
}

func (c fakeConn) LocalAddr() net.Addr { return addrString(c.local) }

// addrString is a net.Addr that is its string.
type addrString string

func (a addrString) Network() string { return "tcp" }
func (a addrString) String() string  { return string(a) }

func leafOf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func subjects(chain []*x509.Certificate) []string {
	var s []string
	for _, c := range chain {
		s = append(s, c.Subject.CommonName)
	}
	return s
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestACMETLSALPNOnClientAuthSite obtains a certificate from Pebble with
// TLS-ALPN-01 alone for a site that requires client certificates: the
// CA's validation presents none, and must still get its challenge
// certificate. The listener speaks TLS 1.2 at most: in TLS 1.3 the
// validator's side of the handshake ends before the server has checked the
// client's certificate, which would hide a refusal.
func TestACMETLSALPNOnClientAuthSite(t *testing.T) {
	env := newACMEEnv(t, 0)
	name := uniqueName("mtls")
	pki := newClientPKI(t, t.TempDir(), "clients")
	m, err := New(env.config(t, Site{
		Names:         []string{name},
		ACME:          ACME{DisableHTTPChallenge: true},
		ClientCAFiles: []string{pki.caFile},
	}), env.logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Stop)
	serveHTTP(t, env.httpLn, m.HTTPChallengeHandler(http.NotFoundHandler()))
	srvCfg := m.TLSConfig()
	srvCfg.MaxVersion = tls.VersionTLS12 // before use: the client-auth copies follow
	addr, _ := serveStates(t, tls.NewListener(env.tlsLn, srvCfg))
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}

	cfg := &tls.Config{ServerName: name, RootCAs: env.ca.IssuingRoots()}
	withClientCert(cfg, &pki.leaf)
	var st tls.ConnectionState
	waitFor(t, 30*time.Second, "a certificate from Pebble", func() bool {
		st, err = dialTLS(addr, cfg)
		return err == nil
	})
	if leaf := st.PeerCertificates[0]; !slices.Equal(leaf.DNSNames, []string{name}) || st.Version != tls.VersionTLS12 {
		t.Errorf("served DNS names %q over %#x, want [%s] over TLS 1.2", leaf.DNSNames, st.Version, name)
	}
	if env.logs.FilterMessage("served key authentication certificate").Len() == 0 {
		t.Error("no TLS-ALPN-01 challenge was answered")
	}
	cfg.GetClientCertificate = nil
	if _, err := dialTLS(addr, cfg); err == nil {
		t.Error("a handshake without a client certificate succeeded")
	}
}

// TestClientAuthResumption checks that a TLS session resumes on its own
// site only: a client that offers a session of one site to another (a
// ticket is not bound to a server name) gets a full handshake there, with
// that site's client authentication.
func TestClientAuthResumption(t *testing.T) {
	dir := t.TempDir()
	a, b := newClientPKI(t, dir, "a"), newClientPKI(t, dir, "b")
	m := startTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{Names: []string{"a.internal"}, ClientCAFiles: []string{a.caFile}},
			{Names: []string{"b.internal"}, ClientCAFiles: []string{b.caFile}},
			{Names: []string{"open.internal"}},
		},
	})
	addr, results := serveTLSStates(t, m.TLSConfig())
	for _, tt := range []struct {
		name, first, then string
		resume            bool
	}{
		{"same site", "a.internal", "a.internal", true},
		{"site with another CA", "a.internal", "b.internal", false},
		{"open site", "a.internal", "open.internal", false},
		{"from the open site", "open.internal", "a.internal", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cache := &anyNameCache{}
			// Skipping verification makes the client offer a session
			// whose certificate does not cover the name it asks for.
			cfg := &tls.Config{ServerName: tt.first, InsecureSkipVerify: true, ClientSessionCache: cache}
			withClientCert(cfg, &a.leaf)
			if _, err := dialTLS(addr, cfg); err != nil {
				t.Fatalf("first handshake: %v", err)
			}
			receive(t, results)
			if cache.get() == nil {
				t.Fatal("no session ticket after the first handshake")
			}
			cfg.ServerName = tt.then
			st, err := dialTLS(addr, cfg)
			srv := receive(t, results)
			if tt.resume {
				if err != nil || !st.DidResume || len(srv.state.VerifiedChains) == 0 {
					t.Errorf("second handshake: %v, resumed %v, %d verified chains; want a resumption with the chain", err, st.DidResume, len(srv.state.VerifiedChains))
				}
				return
			}
			if srv.state.DidResume {
				t.Errorf("the session of %s resumed on %s", tt.first, tt.then)
			}
			wantErr := tt.then == "b.internal" // a's certificate is not b's
			if (err != nil) != wantErr || (srv.err != nil) != wantErr {
				t.Errorf("second handshake: client %v, server %v; want an error: %v", err, srv.err, wantErr)
			}
		})
	}
}

// anyNameCache is a tls.ClientSessionCache that offers its one session for
// any server name.
type anyNameCache struct {
	mu sync.Mutex
	cs *tls.ClientSessionState
}

func (c *anyNameCache) Get(string) (*tls.ClientSessionState, bool) {
	cs := c.get()
	return cs, cs != nil
}

func (c *anyNameCache) Put(_ string, cs *tls.ClientSessionState) {
	if cs == nil {
		return // a failed resumption deletes; keep it to offer again
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cs = cs
}

func (c *anyNameCache) get() *tls.ClientSessionState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cs
}
