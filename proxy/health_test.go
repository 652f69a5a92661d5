package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
)

// getHealth does a GET of the admin endpoint's path and returns the status
// and body.
func getHealth(t *testing.T, srv *Server, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+srv.AdminAddr().String()+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("%s: Content-Type %q", path, ct)
	}
	return resp.StatusCode, string(b)
}

// eventuallyHealth polls path until it answers status, and returns the body.
func eventuallyHealth(t *testing.T, srv *Server, path string, status int) string {
	t.Helper()
	var got int
	var body string
	eventually(t, path+" answering "+http.StatusText(status), func() bool {
		got, body = getHealth(t, srv, path)
		return got == status
	})
	return body
}

const healthyBody = "listeners ok\ncertificates ok\nupstreams ok\n"

// TestHealthEndpoints: /healthz and /readyz on the admin listener answer 200
// with one "NAME ok" line per check while all is well; a serving loop that
// stops fails both (liveness says which), each with its reason.
func TestHealthEndpoints(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, `{
	default_bind 127.0.0.1
	admin 127.0.0.1:0
}
localhost:0 {
	reverse_proxy `+app.Addr()+`
}
`, nil)
	if status, body := getHealth(t, h.srv, "/healthz"); status != http.StatusOK || body != "serving ok\n" {
		t.Fatalf("/healthz: %d %q", status, body)
	}
	if status, body := getHealth(t, h.srv, "/readyz"); status != http.StatusOK || body != healthyBody {
		t.Fatalf("/readyz: %d %q", status, body)
	}

	// The TCP listener dies under its server (not a shutdown).
	tcp := h.srv.Listeners()[0].TCP[0].String()
	h.srv.ports[0].tcp[0].Close()
	body := eventuallyHealth(t, h.srv, "/healthz", http.StatusServiceUnavailable)
	if want := "serving failed: stopped: tcp " + tcp + ": "; !strings.HasPrefix(body, want) {
		t.Fatalf("/healthz body %q, want it to start %q", body, want)
	}
	status, body := getHealth(t, h.srv, "/readyz")
	if want := "listeners failed: stopped: tcp " + tcp + ": "; status != http.StatusServiceUnavailable || !strings.HasPrefix(body, want) ||
		!strings.HasSuffix(body, "\ncertificates ok\nupstreams ok\n") {
		t.Fatalf("/readyz: %d %q, want 503 starting %q", status, body, want)
	}
}

// TestReadinessWaitsForCertificatesAndBackends: /readyz fails, naming each
// cause, until the certificates are loaded, and while a reverse_proxy has no
// healthy backend; liveness holds throughout.
func TestReadinessWaitsForCertificatesAndBackends(t *testing.T) {
	app := startApp(t, "app", nil)
	dead := deadAddr(t)
	cfg, err := configs.Parse("Roamfile", []byte(`{
	default_bind 127.0.0.1
	admin 127.0.0.1:0
}
localhost:0 {
	handle /api/* {
		reverse_proxy `+dead+` {
			health_uri /health
			health_interval 1h
		}
	}
	reverse_proxy `+app.Addr()+`
}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	logger, _ := testLogger(t)
	certs, err := tlsmgr.New(tlsmgr.ConfigFor(cfg, t.TempDir()), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(certs.Stop)
	srv, err := New(cfg, Options{Logger: logger, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(certs); err != nil {
		t.Fatal(err)
	}
	shutdownOnCleanup(t, srv)

	// The dead backend's first check runs at once; the certificates are
	// not loaded until certs.Start.
	want := "listeners ok\ncertificates failed: certificates not loaded yet (starting)\n" +
		"upstreams failed: Roamfile:7:3: reverse_proxy: no healthy backend (" + dead + ")\n"
	eventually(t, "/readyz answering 503 and naming both causes", func() bool {
		status, body := getHealth(t, srv, "/readyz")
		return status == http.StatusServiceUnavailable && body == want
	})
	if status, _ := getHealth(t, srv, "/healthz"); status != http.StatusOK {
		t.Fatalf("/healthz: %d while not ready", status)
	}
	if err := certs.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if status, body := getHealth(t, srv, "/readyz"); status != http.StatusServiceUnavailable || !strings.Contains(body, "\ncertificates ok\nupstreams failed: ") {
		t.Fatalf("/readyz with certificates: %d %q", status, body)
	}
}
