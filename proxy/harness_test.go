package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/impair"
	"github.com/roamgate/roamgate/tlsmgr"
	"github.com/roamgate/roamgate/tlsmgr/acmetest"
	"github.com/roamgate/roamgate/upstream"
)

func TestMain(m *testing.M) {
	// Loopback CI machines often cap UDP buffers below what quic-go asks
	// for; the warning is noise here (the README documents the sysctl).
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	goleak.VerifyTestMain(m, acmetest.IgnoreCertmagicGoroutines...)
}

// harness is a running roamgate (real listeners on loopback, real local CA)
// built from a Roamfile text.
type harness struct {
	srv   *Server
	certs *tlsmgr.Manager
	reg   *prometheus.Registry
	logs  *observer.ObservedLogs
	port  int
	addr  string // 127.0.0.1:port
}

// startProxy parses roamfile ({$NAME} from env), starts certificates and the
// server, and shuts both down when the test ends, failing it when shutdown
// takes over a second.
func startProxy(t testing.TB, roamfile string, env map[string]string) *harness {
	t.Helper()
	logger, logs := testLogger(t)
	h := startProxyLogging(t, roamfile, env, logger)
	h.logs = logs
	return h
}

// startProxyLogging is startProxy with a logger of the caller's: benchmarks
// log as production does (info, JSON, to nowhere), not to the test.
func startProxyLogging(t testing.TB, roamfile string, env map[string]string, logger *zap.Logger) *harness {
	t.Helper()
	return startProxyWith(t, roamfile, env, logger, Options{})
}

// startProxyWith is startProxyLogging with Options of the caller's (the
// logger and registry are the harness's).
func startProxyWith(t testing.TB, roamfile string, env map[string]string, logger *zap.Logger, opts Options) *harness {
	t.Helper()
	cfg, err := configs.Parse("Roamfile", []byte(roamfile), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("parse Roamfile: %v", err)
	}
	certs, err := tlsmgr.New(tlsmgr.ConfigFor(cfg, t.TempDir()), logger.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(certs.Stop)
	if err := certs.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	opts.Logger, opts.Registry = logger, reg
	srv, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(certs); err != nil {
		t.Fatal(err)
	}
	shutdownOnCleanup(t, srv)
	h := &harness{srv: srv, certs: certs, reg: reg}
	h.port = srv.Listeners()[0].Port
	h.addr = srv.Listeners()[0].UDP[0].String()
	return h
}

// testLogger logs to the test (warnings and up) and records everything for
// assertions.
func testLogger(t testing.TB) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return acmetest.Logger(t, zap.WarnLevel, core), logs
}

// shutdownOnCleanup shuts srv down when the test ends, failing the test
// when that takes over a second.
func shutdownOnCleanup(t testing.TB, srv *Server) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v (after %v)", err, time.Since(start))
		}
	})
}

// siteFor is the usual test Roamfile: one site on an ephemeral loopback port
// in front of the given upstreams, with extra reverse_proxy settings.
func siteFor(extra string, upstreams ...string) string {
	return `{
	default_bind 127.0.0.1
}
localhost:0 {
	reverse_proxy ` + strings.Join(upstreams, " ") + extra + `
}
`
}

func (h *harness) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: h.certs.LocalCA().RootPool(), ServerName: "localhost"}
}

// dial opens an HTTP/3 connection that can migrate; it is closed when the
// test ends.
func (h *harness) dial(t testing.TB) *h3client.Conn {
	t.Helper()
	return h.dialTo(t, h.addr)
}

func (h *harness) dialTo(t testing.TB, addr string) *h3client.Conn {
	t.Helper()
	return h.dialWith(t, addr, h.clientTLS())
}

// dialWith is dialTo with a TLS configuration of the test's.
func (h *harness) dialWith(t testing.TB, addr string, tlsConf *tls.Config) *h3client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, addr, tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testutilCounter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// pathChanges sums roamgate_path_changes_total over its kinds.
func (h *harness) pathChanges() float64 {
	pc := h.srv.metrics.pathChanges
	return testutil.ToFloat64(pc.WithLabelValues("address")) + testutil.ToFloat64(pc.WithLabelValues("port"))
}

func (h *harness) sessionsOpened(proto string) float64 {
	return testutil.ToFloat64(h.srv.metrics.sessionsOpened.WithLabelValues(proto))
}

// do sends one request on c and returns the response with its body read.
func do(t *testing.T, c interface {
	RoundTrip(*http.Request) (*http.Response, error)
}, method, url string, body io.Reader, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, string(b)
}

// seen does a GET of the legacy app's "/" and decodes what it saw.
func seen(t *testing.T, c *h3client.Conn, h *harness, client string) legacyapp.Request {
	t.Helper()
	resp, body := do(t, c, "GET", "https://localhost:"+itoa(h.port)+"/", nil, map[string]string{"X-Client": client})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %d %s", resp.StatusCode, body)
	}
	var r legacyapp.Request
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return r
}

func startApp(t testing.TB, name string, h http.Handler) *legacyapp.App {
	t.Helper()
	a, err := legacyapp.Start("127.0.0.1:0", name, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// startAppOn starts a legacy app serving h on loopback TCP or on a Unix
// socket in a test directory, and returns it with its upstream address.
func startAppOn(t testing.TB, network string, h http.Handler) (*legacyapp.App, string) {
	t.Helper()
	if network == "tcp" {
		a := startApp(t, "app", h)
		return a, a.Addr()
	}
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	a := legacyapp.Serve(ln, "app", h)
	t.Cleanup(func() { a.Close() })
	return a, upstream.UnixPrefix + sock
}

// eventually polls cond until it holds or five seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logged reports the entries with message msg.
func (h *harness) logged(msg string) []observer.LoggedEntry {
	return h.logs.FilterMessage(msg).All()
}

func itoa(n int) string { return strconv.Itoa(n) }

// startRelay starts an impair relay (a NAT, and faults as f says) in front
// of the proxy, closed when the test ends.
func startRelay(t testing.TB, server string, f impair.Faults) *impair.Relay {
	t.Helper()
	r, err := impair.New(netip.MustParseAddrPort(server), f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
