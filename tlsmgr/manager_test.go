package tlsmgr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
	"github.com/roamgate/roamgate/tlsmgr/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(acmetest.IgnoreCertmagicGoroutines, redistest.IgnoreGoroutines...)...)
}

// testLogger returns a logger for a Manager of t: warnings and errors go to
// t.Log.
func testLogger(t testing.TB) *zap.Logger { return acmetest.Logger(t, zap.WarnLevel) }

// newTestManager creates a Manager that is stopped when the test ends.
func newTestManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Stop)
	return m
}

// startTestManager creates and starts a Manager that is stopped when the
// test ends.
func startTestManager(t *testing.T, cfg Config) *Manager {
	t.Helper()
	m := newTestManager(t, cfg)
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m
}

// serveTLS runs a TLS server on 127.0.0.1 that completes one handshake per
// connection and hangs up. It returns the server's address.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return serveHandshakes(t, ln)
}

// serveHandshakes completes one TLS handshake per connection of ln, each in
// a goroutine of its own (an on-demand handshake waits for the CA, whose
// TLS-ALPN-01 validation comes in on the same listener), and hangs up. It
// returns ln's address; the test's end closes ln and the open connections.
func serveHandshakes(t *testing.T, ln net.Listener) string {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[conn] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
				_ = conn.(*tls.Conn).Handshake() // failures are the client's to report
				_ = conn.Close()
				mu.Lock()
				delete(conns, conn)
				mu.Unlock()
			})
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for conn := range conns {
			_ = conn.Close()
		}
		mu.Unlock()
		exited := make(chan struct{})
		go func() { <-done; wg.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(time.Second):
			t.Error("tls server did not exit within 1s of closing its listener")
		}
	})
	return ln.Addr().String()
}

// handshake dials addr and returns the completed handshake's state. With an
// empty cfg.ServerName no SNI is sent and the IP address is verified.
func handshake(t *testing.T, addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}

func TestManagerServesLocalNames(t *testing.T) {
	const lifetime = 48 * time.Hour
	m := startTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites: []Site{
			{Names: []string{"localhost", "App.Internal"}},
			{Names: []string{"127.0.0.1", "*.svc.internal"}, Issuer: IssuerLocal},
		},
		LeafLifetime: lifetime,
	})
	addr := serveTLS(t, m.TLSConfig())
	root := m.LocalCA().Root()

	tests := []struct {
		name       string
		serverName string // sent as SNI unless empty
		wantDNS    []string
		wantIP     string
	}{
		{name: "localhost", serverName: "localhost", wantDNS: []string{"localhost"}},
		{name: "internal name", serverName: "app.internal", wantDNS: []string{"app.internal"}},
		{name: "wildcard", serverName: "api.svc.internal", wantDNS: []string{"*.svc.internal"}},
		{name: "no SNI gets the IP certificate", wantIP: "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			st, err := handshake(t, addr, &tls.Config{
				ServerName: tt.serverName,
				RootCAs:    m.LocalCA().RootPool(),
				NextProtos: []string{"h2", "http/1.1"},
			})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if len(st.VerifiedChains) == 0 {
				t.Fatal("no verified chain")
			}
			if st.NegotiatedProtocol != "h2" {
				t.Errorf("ALPN = %q, want h2", st.NegotiatedProtocol)
			}
			leaf := st.PeerCertificates[0]
			if !slices.Equal(leaf.DNSNames, tt.wantDNS) {
				t.Errorf("DNS SANs = %q, want %q", leaf.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range leaf.IPAddresses {
				ips = append(ips, ip.String())
			}
			if tt.wantIP != "" && !slices.Equal(ips, []string{tt.wantIP}) {
				t.Errorf("IP SANs = %q, want [%s]", ips, tt.wantIP)
			}
			if err := leaf.CheckSignatureFrom(root); err != nil {
				t.Errorf("leaf not signed by the local CA root: %v", err)
			}
			if got := leaf.NotAfter.Sub(before); got < lifetime-time.Minute || got > lifetime+time.Minute {
				t.Errorf("leaf valid for %s from now, want about %s", got, lifetime)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage = %v / %v, want DigitalSignature / ServerAuth", leaf.KeyUsage, leaf.ExtKeyUsage)
			}
		})
	}

	t.Run("http/1.1 only client", func(t *testing.T) {
		st, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool(), NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if st.NegotiatedProtocol != "http/1.1" {
			t.Errorf("ALPN = %q, want http/1.1", st.NegotiatedProtocol)
		}
	})
	t.Run("unknown name without default fails", func(t *testing.T) {
		_, err := handshake(t, addr, &tls.Config{ServerName: "other.example", InsecureSkipVerify: true})
		if err == nil {
			t.Fatal("handshake for an unconfigured name succeeded")
		}
	})
	t.Run("TLS 1.1 client is refused", func(t *testing.T) {
		_, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool(), MaxVersion: tls.VersionTLS11})
		if err == nil {
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
}

func TestManagerTLSConfigs(t *testing.T) {
	m := newTestManager(t, Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}})

	tcp := m.TLSConfig()
	if want := []string{"h2", "http/1.1", "acme-tls/1"}; !slices.Equal(tcp.NextProtos, want) {
		t.Errorf("TLSConfig().NextProtos = %q, want %q", tcp.NextProtos, want)
	}
	if tcp.MinVersion != tls.VersionTLS12 {
		t.Errorf("TLSConfig().MinVersion = %#x, want TLS 1.2", tcp.MinVersion)
	}
	if tcp.GetCertificate == nil {
		t.Error("TLSConfig().GetCertificate is nil")
	}

	q := m.QUICTLSConfig()
	if want := []string{"h3"}; !slices.Equal(q.NextProtos, want) {
		t.Errorf("QUICTLSConfig().NextProtos = %q, want %q", q.NextProtos, want)
	}
	if q.MinVersion != tls.VersionTLS13 {
		t.Errorf("QUICTLSConfig().MinVersion = %#x, want TLS 1.3", q.MinVersion)
	}
	if q.GetCertificate == nil {
		t.Error("QUICTLSConfig().GetCertificate is nil")
	}

	// Each call returns a fresh clone: a caller's change stays its own.
	tcp.NextProtos[0] = "changed"
	tcp.MinVersion = tls.VersionTLS13
	q.NextProtos[0] = "changed"
	if again := m.TLSConfig(); again.NextProtos[0] != "h2" || again.MinVersion != tls.VersionTLS12 {
		t.Errorf("TLSConfig() shares state between calls: %q %#x", again.NextProtos, again.MinVersion)
	}
	if again := m.QUICTLSConfig(); again.NextProtos[0] != "h3" {
		t.Errorf("QUICTLSConfig() shares state between calls: %q", again.NextProtos)
	}
}

// TestQUICHandshake completes a real QUIC handshake (as HTTP/3 does) with
// QUICTLSConfig over two loopback UDP sockets.
func TestQUICHandshake(t *testing.T) {
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	m := startTestManager(t, Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}})

	serverUDP := listenUDP(t)
	serverTr := &quic.Transport{Conn: serverUDP}
	t.Cleanup(func() { _ = serverTr.Close() })
	ln, err := serverTr.Listen(m.QUICTLSConfig(), nil)
	if err != nil {
		t.Fatalf("quic listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	type acceptResult struct {
		conn *quic.Conn
		err  error
	}
	accepted := make(chan acceptResult, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		accepted <- acceptResult{conn, err}
	}()

	clientTr := &quic.Transport{Conn: listenUDP(t)}
	t.Cleanup(func() { _ = clientTr.Close() })
	conn, err := clientTr.Dial(ctx, serverUDP.LocalAddr(), &tls.Config{
		ServerName: "localhost",
		RootCAs:    m.LocalCA().RootPool(),
		NextProtos: []string{"h3"},
	}, nil)
	if err != nil {
		t.Fatalf("quic dial: %v", err)
	}
	defer conn.CloseWithError(0, "")
	st := conn.ConnectionState().TLS
	res := <-accepted // the server returns a connection once its side of the handshake is done
	if res.err != nil {
		t.Fatalf("quic accept: %v", res.err)
	}
	defer res.conn.CloseWithError(0, "")
	if got := res.conn.ConnectionState().TLS.NegotiatedProtocol; got != "h3" {
		t.Errorf("server side negotiated %q, want h3", got)
	}
	if st.NegotiatedProtocol != "h3" || st.Version != tls.VersionTLS13 {
		t.Errorf("negotiated %q over %#x, want h3 over TLS 1.3", st.NegotiatedProtocol, st.Version)
	}
	if len(st.VerifiedChains) == 0 || !slices.Equal(st.PeerCertificates[0].DNSNames, []string{"localhost"}) {
		t.Errorf("peer certificate %q not verified for localhost", st.PeerCertificates[0].DNSNames)
	}
}

func listenUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestDefaultServerName(t *testing.T) {
	m := startTestManager(t, Config{
		DataDir:           t.TempDir(),
		Sites:             []Site{{Names: []string{"localhost"}}, {Names: []string{"app.internal"}}},
		DefaultServerName: "App.Internal",
	})
	addr := serveTLS(t, m.TLSConfig())

	for _, tt := range []struct{ name, serverName string }{
		{"unknown SNI", "unknown.example"},
		{"no SNI and no IP certificate", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The default certificate does not carry the name asked for,
			// so verify it by hand against the name it does carry.
			st, err := handshake(t, addr, &tls.Config{ServerName: tt.serverName, InsecureSkipVerify: true})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			leaf := st.PeerCertificates[0]
			if !slices.Equal(leaf.DNSNames, []string{"app.internal"}) {
				t.Fatalf("served %q, want the default app.internal", leaf.DNSNames)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.LocalCA().RootPool(), DNSName: "app.internal"}); err != nil {
				t.Errorf("default certificate does not verify: %v", err)
			}
		})
	}
	t.Run("default name without a certificate warns", func(t *testing.T) {
		core, logs := observer.New(zap.WarnLevel)
		m, err := New(Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}, DefaultServerName: "nowhere.internal"}, zap.New(core))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		defer m.Stop()
		if err := m.Start(t.Context()); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if logs.FilterField(zap.String("default_server_name", "nowhere.internal")).Len() != 1 {
			t.Errorf("want one warning about the default server name, got %v", logs.All())
		}
	})
	t.Run("known SNI keeps its own certificate", func(t *testing.T) {
		st, err := handshake(t, addr, &tls.Config{ServerName: "localhost", RootCAs: m.LocalCA().RootPool()})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		if got := st.PeerCertificates[0].DNSNames; !slices.Equal(got, []string{"localhost"}) {
			t.Errorf("served %q, want localhost", got)
		}
	})
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{"no data dir", Config{Sites: []Site{{Names: []string{"localhost"}}}}, []string{"data directory is required"}},
		{"cert without key", Config{DataDir: dir, Sites: []Site{{CertFile: "c.pem"}}}, []string{`tls site 1: certificate file "c.pem" without a key file`}},
		{"key without cert", Config{DataDir: dir, Sites: []Site{{KeyFile: "k.pem"}}}, []string{`tls site 1: key file "k.pem" without a certificate file`}},
		{"no names", Config{DataDir: dir, Sites: []Site{{}}}, []string{"tls site 1: no names"}},
		{"space in name", Config{DataDir: dir, Sites: []Site{{Names: []string{"local host"}}}}, []string{`name "local host": invalid character ' '`}},
		{"inner wildcard", Config{DataDir: dir, Sites: []Site{{Names: []string{"a.*.example"}}}}, []string{`name "a.*.example": a wildcard`}},
		{"port", Config{DataDir: dir, Sites: []Site{{Names: []string{"localhost:8443"}}}}, []string{`name "localhost:8443": has a port`}},
		{"zone", Config{DataDir: dir, Sites: []Site{{Names: []string{"fe80::1%eth0"}}}}, []string{"with a zone"}},
		{"unknown issuer", Config{DataDir: dir, Sites: []Site{{Names: []string{"localhost"}, Issuer: 9}}}, []string{"unknown issuer Issuer(9)"}},
		{"name in two sites", Config{DataDir: dir, Sites: []Site{{Names: []string{"localhost"}}, {Names: []string{"LOCALHOST"}}}}, []string{`tls site 2: name "localhost" is already in tls site 1`}},
		{"short lifetime", Config{DataDir: dir, LeafLifetime: time.Minute}, []string{"leaf lifetime 1m0s is shorter than the minimum 1h0m0s"}},
		{"bad default name", Config{DataDir: dir, DefaultServerName: "a b"}, []string{"tls default server name"}},
		{
			"every problem at once",
			Config{Sites: []Site{{Names: []string{"a b"}}, {CertFile: "c.pem"}}},
			[]string{"data directory is required", `name "a b"`, `"c.pem" without a key file`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.cfg, testLogger(t))
			if err == nil {
				m.Stop()
				t.Fatal("New succeeded")
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
	// Validation comes before storage is touched.
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("data dir after invalid configs: %v entries, err %v; want it untouched", len(entries), err)
	}
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"LocalHost":         "localhost",
		" app.internal ":    "app.internal",
		"*.Example.COM":     "*.example.com",
		"127.0.0.1":         "127.0.0.1",
		"[::1]":             "::1",
		"0:0:0:0:0:0:0:1":   "::1",
		"::ffff:10.0.0.1":   "10.0.0.1",
		"xn--bcher-kva.com": "xn--bcher-kva.com",
		"bücher.example":    "bücher.example",
		"_srv.app.internal": "_srv.app.internal",
	} {
		if got, err := normalizeName(in); err != nil || got != want {
			t.Errorf("normalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "*", "*.", ".example.com", "example.com.", "a.*.b", "*x.example", "host:80", "[::1]:443", "a/b", "a@b", "a,b", "ex ample.com"} {
		if got, err := normalizeName(in); err == nil {
			t.Errorf("normalizeName(%q) = %q, want an error", in, got)
		}
	}
}

func TestStartRunsOnce(t *testing.T) {
	m := startTestManager(t, Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}})
	if err := m.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "already started") {
		t.Errorf("second Start: %v, want already started", err)
	}
	m.Stop()

	stopped := newTestManager(t, Config{DataDir: t.TempDir()})
	stopped.Stop()
	if err := stopped.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Start after Stop: %v, want stopped", err)
	}
}

func TestStopIsIdempotentAndLeavesNoGoroutines(t *testing.T) {
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, acmetest.IgnoreCertmagicGoroutines...)

	m, err := New(Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost", "127.0.0.1"}}}}, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(m.Stop) // concurrent Stops are fine too
	}
	wg.Wait()
	m.Stop()
	goleak.VerifyNone(t, opts...)

	// A failed New starts nothing.
	if _, err := New(Config{}, testLogger(t)); err == nil {
		t.Fatal("New with an empty config succeeded")
	}
	goleak.VerifyNone(t, opts...)
}

// TestManagerNilLogger checks that a nil logger is allowed.
func TestManagerNilLogger(t *testing.T) {
	m, err := New(Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}}, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer m.Stop()
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func TestIssuerString(t *testing.T) {
	for i, want := range map[Issuer]string{IssuerAuto: "auto", IssuerLocal: "local", IssuerACME: "acme", 7: "Issuer(7)"} {
		if got := i.String(); got != want {
			t.Errorf("Issuer(%d).String() = %q, want %q", int(i), got, want)
		}
	}
}

// errorsContain reports whether err's message contains every substring.
func errorsContain(err error, subs ...string) bool {
	if err == nil {
		return false
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			return false
		}
	}
	return true
}
