package tlsmgr

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// acmeEnv is a Pebble CA and the challenge listeners it validates against:
// a plain-HTTP one (HTTP-01) and a TCP one for TLS (TLS-ALPN-01), both on
// 127.0.0.1. They are opened first, as the proxy opens its listeners before
// Manager.Start, and serve the Manager once there is one (start).
type acmeEnv struct {
	ca            *acmetest.CA
	httpLn, tlsLn net.Listener
	logs          *observer.ObservedLogs // the Manager's logs, Info and above
	logger        *zap.Logger
}

func newACMEEnv(t *testing.T, validity time.Duration) *acmeEnv {
	t.Helper()
	e := &acmeEnv{httpLn: listenTCP(t), tlsLn: listenTCP(t)}
	e.ca = acmetest.Start(t, acmetest.Options{
		HTTPPort: tcpPort(e.httpLn),
		TLSPort:  tcpPort(e.tlsLn),
		Validity: validity,
	})
	core, logs := observer.New(zap.InfoLevel)
	e.logs = logs
	e.logger = acmetest.Logger(t, zap.WarnLevel, core)
	return e
}

// config returns a Config for sites whose ACME CA is e's Pebble, with the
// challenge ports of e's listeners.
func (e *acmeEnv) config(t *testing.T, sites ...Site) Config {
	t.Helper()
	return Config{
		DataDir: t.TempDir(),
		Sites:   sites,
		ACME: ACME{
			CA:         e.ca.DirectoryURL(),
			Email:      "ops@example.com", // certmagic would prompt on stdin in RenewCertSync without one
			CARootFile: e.ca.ClientRootsFile(t),
		},
		HTTPPort:   tcpPort(e.httpLn),
		TLSPort:    tcpPort(e.tlsLn),
		ListenHost: "127.0.0.1",
	}
}

// start creates a Manager for cfg, serves its challenge handlers on e's
// listeners and only then starts it (the order the proxy must keep). It
// returns the manager and the address of its TLS listener.
func (e *acmeEnv) start(t *testing.T, cfg Config) (*Manager, string) {
	t.Helper()
	m, err := New(cfg, e.logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Stop)
	serveHTTP(t, e.httpLn, m.HTTPChallengeHandler(http.NotFoundHandler()))
	addr := serveHandshakes(t, tls.NewListener(e.tlsLn, m.TLSConfig()))
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m, addr
}

// issuerKey returns the certmagic issuer key of the manager's ACME CA, the
// issuer label of its metrics.
func issuerKey(t *testing.T, m *Manager) string {
	t.Helper()
	for _, u := range m.plan().issuances {
		if u.acme != nil {
			return u.acme.IssuerKey()
		}
	}
	t.Fatal("manager has no ACME issuer")
	return ""
}

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

func tcpPort(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// serveHTTP serves h on ln until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, h http.Handler) {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Error("http server did not exit within 1s of Close")
		}
	})
}

// waitForCert polls TLS handshakes with name as SNI until one verifies
// against roots, and returns the served leaf. ACME certificates arrive in
// the background after Start.
func waitForCert(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := handshake(t, addr, &tls.Config{ServerName: name, RootCAs: roots})
		if err == nil {
			return st.PeerCertificates[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verified certificate for %s within 30s; last handshake: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nameSeq makes unique names: certmagic keeps some per-name state for the
// whole process (renewal backoff, job names, active challenges), which
// must not carry over between tests or between runs with -count.
var nameSeq atomic.Int64

func uniqueName(label string) string {
	return fmt.Sprintf("%s-%d-%d.example.com", label, time.Now().UnixNano()%1e6, nameSeq.Add(1))
}

// TestACMEChallenges obtains a certificate from Pebble with each challenge
// type alone, answered by the test's own listeners: HTTP-01 on the plain
// HTTP one (HTTPChallengeHandler), TLS-ALPN-01 on the TLS one (TLSConfig).
func TestACMEChallenges(t *testing.T) {
	for _, tt := range []struct {
		challenge string
		acme      ACME
	}{
		{"http-01", ACME{DisableTLSALPNChallenge: true}},
		{"tls-alpn-01", ACME{DisableHTTPChallenge: true}},
	} {
		t.Run(tt.challenge, func(t *testing.T) {
			env := newACMEEnv(t, 0)
			name := uniqueName("shop")
			m, addr := env.start(t, env.config(t, Site{Names: []string{name}, ACME: tt.acme}))

			leaf := waitForCert(t, addr, name, env.ca.IssuingRoots())
			if !slices.Equal(leaf.DNSNames, []string{name}) {
				t.Errorf("served DNS names %q, want [%s]", leaf.DNSNames, name)
			}
			if !strings.HasPrefix(leaf.Issuer.CommonName, "Pebble Intermediate CA") {
				t.Errorf("issued by %q, want Pebble's intermediate", leaf.Issuer.CommonName)
			}
			if n := env.ca.Orders(name); n != 1 {
				t.Errorf("Pebble got %d orders for %s, want 1", n, name)
			}
			// certmagic logs "served key authentication" (HTTP-01) and
			// "served key authentication certificate" (TLS-ALPN-01).
			served := env.logs.FilterMessageSnippet("served key authentication").FilterField(zap.String("challenge", tt.challenge))
			if served.Len() == 0 {
				t.Errorf("no %s challenge was answered by the test's listeners", tt.challenge)
			}
			if got := testutil.ToFloat64(m.metrics.obtained.WithLabelValues(issuerKey(t, m), "false")); got != 1 {
				t.Errorf("obtained counter = %v, want 1", got)
			}
			obtained := env.logs.FilterMessage("certificate obtained").FilterField(zap.String("identifier", name))
			if obtained.Len() != 1 || obtained.All()[0].ContextMap()["not_after"] == nil {
				t.Errorf("want one certificate obtained log with not_after, got %v", obtained.All())
			}
			if !m.UsesACME() {
				t.Error("UsesACME() = false for an ACME site")
			}
		})
	}
}

// TestAutomaticIssuerChoice checks, in one Manager, that IssuerAuto gives
// localhost to the local CA and a public name to ACME, and that IssuerACME
// and IssuerLocal override the name's kind.
func TestAutomaticIssuerChoice(t *testing.T) {
	env := newACMEEnv(t, 0)
	public := uniqueName("mixed")
	forcedACME := fmt.Sprintf("forced-%d.internal", nameSeq.Add(1))
	forcedLocal := uniqueName("local")
	m, addr := env.start(t, env.config(t,
		Site{Names: []string{"localhost", public}},
		Site{Names: []string{forcedACME}, Issuer: IssuerACME},
		Site{Names: []string{forcedLocal}, Issuer: IssuerLocal},
	))

	// Local names are ready when Start returns.
	for _, name := range []string{"localhost", forcedLocal} {
		if _, err := handshake(t, addr, &tls.Config{ServerName: name, RootCAs: m.LocalCA().RootPool()}); err != nil {
			t.Errorf("%s: handshake against the local CA: %v", name, err)
		}
	}
	for _, name := range []string{public, forcedACME} {
		leaf := waitForCert(t, addr, name, env.ca.IssuingRoots())
		if err := leaf.CheckSignatureFrom(m.LocalCA().Root()); err == nil {
			t.Errorf("%s: signed by the local CA, want Pebble", name)
		}
	}
	for name, want := range map[string]int{"localhost": 0, forcedLocal: 0, public: 1, forcedACME: 1} {
		if got := env.ca.Orders(name); got != want {
			t.Errorf("Pebble got %d orders for %s, want %d", got, name, want)
		}
	}
}

// TestACMERenewal lets a short-lived Pebble certificate come up for renewal
// and checks that it is renewed in the background and served.
func TestACMERenewal(t *testing.T) {
	env := newACMEEnv(t, 20*time.Second)
	name := uniqueName("renew")
	cfg := env.config(t, Site{Names: []string{name}})
	// Renew after 10% of the 20s lifetime, checked every 200ms. (Pebble's
	// ARI window spans the whole lifetime of so short a certificate, so
	// certmagic may pick an even earlier time from it.)
	cfg.RenewalWindowRatio = 0.9
	cfg.RenewCheckInterval = 200 * time.Millisecond
	m, addr := env.start(t, cfg)

	first := waitForCert(t, addr, name, env.ca.IssuingRoots())
	var renewed *x509.Certificate
	waitFor(t, 20*time.Second, "a renewed certificate to be served", func() bool {
		renewed = waitForCert(t, addr, name, env.ca.IssuingRoots())
		return renewed.SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if !renewed.NotAfter.After(first.NotAfter) {
		t.Errorf("renewed certificate expires %s, not after the first's %s", renewed.NotAfter, first.NotAfter)
	}
	if got := testutil.ToFloat64(m.metrics.obtained.WithLabelValues(issuerKey(t, m), "true")); got < 1 {
		t.Errorf("renewals counted: %v, want at least 1", got)
	}
	logged := env.logs.FilterMessage("certificate obtained").FilterField(zap.Bool("renewal", true))
	if logged.Len() == 0 {
		t.Error("no certificate obtained log with renewal=true")
	}
}

// TestACMEOutage checks that a CA outage does not take a site down: the
// renewal that falls due during it fails, is logged and counted, the
// certificate in hand keeps serving, and once the CA is back a retry
// renews it.
func TestACMEOutage(t *testing.T) {
	env := newACMEEnv(t, 20*time.Second)
	name := uniqueName("outage")
	cfg := env.config(t, Site{Names: []string{name}})
	cfg.RenewalWindowRatio = 0.8 // due 4s after issuance
	cfg.RenewCheckInterval = 200 * time.Millisecond
	m, addr := env.start(t, cfg)
	roots := env.ca.IssuingRoots()
	issuer := issuerKey(t, m)

	waitForCert(t, addr, name, roots)
	env.ca.SetDown(true)
	before := waitForCert(t, addr, name, roots) // what the cache held when the CA went down
	// An early renewal (certmagic may pick an early time in Pebble's ARI
	// window) may have come before the outage.
	renewals := m.metrics.obtained.WithLabelValues(issuer, "true")
	renewalsBefore, ordersBefore := testutil.ToFloat64(renewals), env.ca.Orders(name)

	failures := m.metrics.failures.WithLabelValues(issuer, "true")
	waitFor(t, 20*time.Second, "a failed renewal", func() bool { return testutil.ToFloat64(failures) >= 1 })
	logged := env.logs.FilterMessage("obtaining certificate failed").FilterField(zap.String("identifier", name))
	if logged.Len() == 0 {
		t.Fatalf("renewal failure not logged; logs: %v", env.logs.All())
	}
	entry := logged.All()[0]
	if entry.Level != zap.ErrorLevel || entry.ContextMap()["renewal"] != true {
		t.Errorf("failure logged at %s with renewal=%v, want error and true", entry.Level, entry.ContextMap()["renewal"])
	}
	// The down CA fails the nonce request first: a HEAD, whose 503 carries
	// no problem document (TestOnEvent checks that one is logged).
	if reason := fmt.Sprint(entry.ContextMap()["error"]); !strings.Contains(reason, "HTTP 503") {
		t.Errorf("logged error %q lacks the CA's answer", reason)
	}
	during := waitForCert(t, addr, name, roots)
	if during.SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Errorf("certificate changed during the outage: serial %x, want %x", during.SerialNumber, before.SerialNumber)
	}

	env.ca.SetDown(false)
	// certmagic's maintenance would retry only after its backoff (1 minute
	// after the first failure, certmagic's retryIntervals, with no knob to
	// shorten it), so retry now the way an operator would: RenewCertSync
	// makes one attempt at once, storing the new certificate.
	u := m.issuanceFor(name)
	if err := u.magic.RenewCertSync(t.Context(), name, false); err != nil {
		t.Fatalf("renewal after the outage: %v", err)
	}
	if got := testutil.ToFloat64(renewals) - renewalsBefore; got != 1 {
		t.Errorf("renewals counted since the outage began: %v, want 1", got)
	}
	// Then load it the way certmagic's reloadManagedCertificate does. The
	// next maintenance tick would too, unless the new certificate's ARI
	// time (Pebble's window spans all of so short a life) fell in its first
	// tick: the tick would then queue a renewal, which the backoff holds.
	var old []string
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if c.Leaf.SerialNumber.Cmp(before.SerialNumber) == 0 {
			old = append(old, c.Hash())
		}
	}
	if _, err := u.magic.CacheManagedCertificate(t.Context(), name); err != nil {
		t.Fatalf("load the renewed certificate: %v", err)
	}
	m.cache.Remove(old)
	if after := waitForCert(t, addr, name, roots); after.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Error("the renewed certificate is not served")
	}
	if n := env.ca.Orders(name) - ordersBefore; n != 1 {
		t.Errorf("Pebble got %d orders since the outage began, want 1 (none while down)", n)
	}
}

// TestHTTPChallengeHandler checks what the handler passes on.
func TestHTTPChallengeHandler(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })

	local := newTestManager(t, Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"localhost"}}}})
	if local.UsesACME() {
		t.Error("UsesACME() = true for local names only")
	}
	m := newTestManager(t, Config{
		DataDir: t.TempDir(),
		Sites:   []Site{{Names: []string{"www.example.com"}}},
		ACME:    ACME{CA: "https://127.0.0.1:1/dir"}, // never contacted: not started
	})
	for _, h := range []http.Handler{local.HTTPChallengeHandler(next), m.HTTPChallengeHandler(next)} {
		srv := listenTCP(t)
		serveHTTP(t, srv, h)
		for _, path := range []string{"/", "/.well-known/acme-challenge/unknown-token"} {
			resp, err := http.Get("http://" + srv.Addr().String() + path)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusTeapot {
				t.Errorf("GET %s: status %d, want next's 418", path, resp.StatusCode)
			}
		}
	}
}
