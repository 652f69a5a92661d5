package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/tlsmgr"
	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// acmeRoamfile serves shop.example.com, a name a public CA would sign, with
// certificates from the test's ACME CA, on ephemeral ports.
const acmeRoamfile = `{
	default_bind 127.0.0.1
	http_port 0
	https_port 0
	email ops@example.com
	acme_ca {$CA}
	acme_ca_root {$CA_ROOT}
}
shop.example.com {
	reverse_proxy {$APP}
}
`

// startACMEProxy runs roamgate the way `roamgate run` does (listen, then
// build the certificate manager with the bound challenge ports, serve, then
// manage certificates) against an in-process Pebble that validates through
// roamgate's own listeners. tweak adjusts the certificate configuration
// (to leave one challenge type out); validity is the certificates' lifetime
// (0: Pebble's default).
func startACMEProxy(t *testing.T, app string, validity time.Duration, tweak func(*tlsmgr.Config)) (*harness, *acmetest.CA) {
	t.Helper()
	ca := acmetest.New(t)
	cfg, err := configs.Parse("Roamfile", []byte(acmeRoamfile), func(k string) (string, bool) {
		return map[string]string{"CA": ca.DirectoryURL(), "CA_ROOT": ca.ClientRootsFile(t), "APP": app}[k], true
	})
	if err != nil {
		t.Fatal(err)
	}
	logger, logs := testLogger(t)
	reg := prometheus.NewRegistry()
	tcfg := tlsmgr.ConfigFor(cfg, t.TempDir())
	if tweak != nil {
		tweak(&tcfg)
	}
	srv, err := New(cfg, Options{Logger: logger, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(tcfg.UsesACME()); err != nil {
		t.Fatal(err)
	}
	shutdownOnCleanup(t, srv)
	tcfg.HTTPPort, tcfg.TLSPort = srv.ChallengePorts()
	tcfg.Registerer = reg
	ca.Serve(t, acmetest.Options{HTTPPort: tcfg.HTTPPort, TLSPort: tcfg.TLSPort, Validity: validity})
	certs, err := tlsmgr.New(tcfg, logger.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(certs.Stop)
	if err := srv.Serve(certs); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := certs.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("startup waited %v: it must not block on ACME", d)
	}
	h := &harness{srv: srv, certs: certs, reg: reg, logs: logs, port: srv.Listeners()[0].Port, addr: srv.Listeners()[0].UDP[0].String()}
	return h, ca
}

// shopTLS trusts only the test CA's issuing root, for shop.example.com.
func shopTLS(ca *acmetest.CA) *tls.Config {
	return &tls.Config{RootCAs: ca.IssuingRoots(), ServerName: "shop.example.com"}
}

// awaitACMECertificate polls TLS handshakes on the TCP listener until the
// certificate for shop.example.com, verified against the test CA, is served.
func awaitACMECertificate(t *testing.T, h *harness, ca *acmetest.CA) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	eventually(t, "a certificate from the ACME CA", func() bool {
		conn, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), shopTLS(ca))
		if err != nil {
			return false
		}
		defer conn.Close()
		leaf = conn.ConnectionState().PeerCertificates[0]
		return true
	})
	return leaf
}

// checkServedOverH3AndH2 does an HTTP/3 and an HTTP/2 request for
// shop.example.com, each verifying the chain against the test CA's root.
func checkServedOverH3AndH2(t *testing.T, h *harness, ca *acmetest.CA) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, h.addr, shopTLS(ca), nil)
	if err != nil {
		t.Fatalf("HTTP/3 handshake: %v", err)
	}
	defer c.Close()
	url := "https://shop.example.com:" + strconv.Itoa(h.port) + "/"
	resp, body := do(t, c, "GET", url, nil, nil)
	var r legacyapp.Request
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &r) != nil || r.Method != "GET" {
		t.Fatalf("HTTP/3: %d %s", resp.StatusCode, body)
	}
	if chains := c.QUIC().ConnectionState().TLS.VerifiedChains; len(chains) == 0 {
		t.Fatal("HTTP/3: no verified chain")
	}

	dialer := &net.Dialer{}
	tr := &http.Transport{
		TLSClientConfig:   shopTLS(ca),
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", h.srv.Listeners()[0].TCP[0].String())
		},
	}
	defer tr.CloseIdleConnections()
	resp, body = do(t, tr, "GET", url, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/2.0" || resp.TLS == nil || len(resp.TLS.VerifiedChains) == 0 {
		t.Fatalf("HTTP/2: %s %d %s", resp.Proto, resp.StatusCode, body)
	}
}

// TestACMEHTTP01ThroughOwnListeners: with only HTTP-01 allowed, the test CA
// validates through roamgate's plain-HTTP port and issues a certificate
// that then serves HTTP/3 and HTTP/2.
func TestACMEHTTP01ThroughOwnListeners(t *testing.T) {
	app := startApp(t, "app", nil)
	h, ca := startACMEProxy(t, app.Addr(), 0, func(c *tlsmgr.Config) { c.ACME.DisableTLSALPNChallenge = true })
	leaf := awaitACMECertificate(t, h, ca)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "shop.example.com" {
		t.Fatalf("leaf names %v", leaf.DNSNames)
	}
	if ca.Orders("shop.example.com") != 1 {
		t.Fatalf("%d orders for shop.example.com, want 1", ca.Orders("shop.example.com"))
	}
	checkServedOverH3AndH2(t, h, ca)
}

// TestACMETLSALPN01ThroughOwnListeners: with only TLS-ALPN-01 allowed, the
// test CA validates through roamgate's TCP listener (ALPN acme-tls/1).
func TestACMETLSALPN01ThroughOwnListeners(t *testing.T) {
	app := startApp(t, "app", nil)
	h, ca := startACMEProxy(t, app.Addr(), 0, func(c *tlsmgr.Config) { c.ACME.DisableHTTPChallenge = true })
	awaitACMECertificate(t, h, ca)
	checkServedOverH3AndH2(t, h, ca)
}

// TestHTTPPortRedirectsToHTTPS: the plain-HTTP port answers everything that
// is not an ACME challenge with 308 to the same host and path on the HTTPS
// port (named, since it is not 443), method kept.
func TestHTTPPortRedirectsToHTTPS(t *testing.T) {
	app := startApp(t, "app", nil)
	h, ca := startACMEProxy(t, app.Addr(), 0, nil)
	// Let the background issuance finish: certmagic does not wait for it on
	// Stop, and the test's data directory goes away with the test.
	awaitACMECertificate(t, h, ca)
	httpAddr := h.srv.HTTPAddrs()[0].String()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct{ method, host, path, want string }{
		{"GET", "shop.example.com", "/cart?item=1", "https://shop.example.com:" + strconv.Itoa(h.port) + "/cart?item=1"},
		{"POST", "shop.example.com:80", "/pay", "https://shop.example.com:" + strconv.Itoa(h.port) + "/pay"},
		{"GET", "Shop.Example.COM", "/", "https://shop.example.com:" + strconv.Itoa(h.port) + "/"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+httpAddr+tc.path, nil)
		req.Host = tc.host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != tc.want {
			t.Fatalf("%s %s%s: %d Location %q, want 308 %q", tc.method, tc.host, tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.want)
		}
	}
	if n := len(app.Requests()); n != 0 {
		t.Fatalf("the backend got %d plain-HTTP requests", n)
	}
}

// TestACMERenewalWhileServing: a short-lived certificate is renewed in the
// background while a client keeps its HTTP/3 connection (and session) open;
// the connection carries requests before and after, and a new handshake
// gets the new certificate.
func TestACMERenewalWhileServing(t *testing.T) {
	app := startApp(t, "app", nil)
	h, ca := startACMEProxy(t, app.Addr(), 20*time.Second, func(c *tlsmgr.Config) {
		// Renew once 10% of the 20 s lifetime has passed, checked every
		// 200 ms (Pebble's ARI window may make certmagic renew earlier).
		c.RenewalWindowRatio = 0.9
		c.RenewCheckInterval = 200 * time.Millisecond
	})
	first := awaitACMECertificate(t, h, ca)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, h.addr, shopTLS(ca), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	url := "https://shop.example.com:" + strconv.Itoa(h.port) + "/"
	if resp, _ := do(t, c, "GET", url, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("before renewal: %d", resp.StatusCode)
	}
	servedSerial := c.QUIC().ConnectionState().TLS.PeerCertificates[0].SerialNumber
	if servedSerial.Cmp(first.SerialNumber) != 0 {
		t.Fatal("HTTP/3 and TCP served different certificates")
	}

	var renewed *x509.Certificate
	deadline := time.Now().Add(20 * time.Second)
	for renewed == nil || renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no renewed certificate served within 20s")
		}
		time.Sleep(100 * time.Millisecond)
		renewed = awaitACMECertificate(t, h, ca)
	}
	// The connection made before the renewal still works, on its session.
	for range 2 {
		if resp, _ := do(t, c, "GET", url, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("after renewal: %d", resp.StatusCode)
		}
	}
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("HTTP/3 sessions opened = %v, want 1: the connection was dropped", got)
	}
	c2, err := h3client.Dial(ctx, h.addr, shopTLS(ca), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if s := c2.QUIC().ConnectionState().TLS.PeerCertificates[0].SerialNumber; s.Cmp(renewed.SerialNumber) != 0 {
		t.Fatalf("a new HTTP/3 handshake got serial %v, want the renewed %v", s, renewed.SerialNumber)
	}
}
