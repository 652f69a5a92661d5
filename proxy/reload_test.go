package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy/h3client"
)

// generation is a Roamfile for the reload tests: one site on an ephemeral
// port in front of upstreams, its responses marked X-Gen: gen, and extra
// directives in the site.
func generation(gen, extra string, upstreams ...string) string {
	return "{\n\tdefault_bind 127.0.0.1\n}\nlocalhost:0 {\n\theader X-Gen " + gen + "\n" + extra +
		"\treverse_proxy " + strings.Join(upstreams, " ") + "\n}\n"
}

func mustParse(t *testing.T, roamfile string) *configs.Config {
	t.Helper()
	cfg, err := configs.Parse("Roamfile", []byte(roamfile), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestReloadUnderLoad (issue 14): clients with two requests in flight each,
// every one migrating once, while the configuration is reloaded twice
// (headers changed, a route added) and a reload that needs a restart is
// refused: no request fails, every response carries one generation's
// headers whole, the new route serves after its reload, no client
// handshakes again, and every session keeps its upstream connections
// (the reverse_proxy did not change: its pool, and their leases, stay).
func TestReloadUnderLoad(t *testing.T) {
	const clients, inFlight = 6, 2
	app := startApp(t, "app", nil)
	h := startProxy(t, generation("1", "", app.Addr()), nil)
	conns := make([]*h3client.Conn, clients)
	for i := range conns {
		conns[i] = h.dial(t)
	}
	base := "https://localhost:" + strconv.Itoa(h.port)
	var gens sync.Map // X-Gen values seen
	var after atomic.Int64
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		time.Sleep(300 * time.Millisecond)
		if err := h.srv.Reload(mustParse(t, generation("2", "\thandle /new* {\n\t\trespond \"new route\"\n\t}\n", app.Addr()))); err != nil {
			t.Errorf("reload 2: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
		// New connection IDs (quic_lb) need a restart: refused,
		// nothing changes.
		bad := strings.Replace(generation("9", "", app.Addr()), "default_bind 127.0.0.1\n", "default_bind 127.0.0.1\n\tquic_lb {\n\t\tserver_id 01\n\t\tnonce_len 8\n\t}\n", 1)
		if err := h.srv.Reload(mustParse(t, bad)); err == nil || !strings.Contains(err.Error(), "needs a restart") {
			t.Errorf("a quic_lb change: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
		if err := h.srv.Reload(mustParse(t, generation("3", "\theader X-Extra yes\n\thandle /new* {\n\t\trespond \"new route\"\n\t}\n", app.Addr()))); err != nil {
			t.Errorf("reload 3: %v", err)
		}
	}()
	runClients(t, conns, inFlight, 600*time.Millisecond, func(ctx context.Context, conn *h3client.Conn, label string, n int) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/", nil)
		req.Header.Set("X-Client", label)
		resp, err := conn.RoundTrip(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		gen := resp.Header.Get("X-Gen")
		if resp.StatusCode != 200 || (gen != "1" && gen != "2" && gen != "3") || gen == "9" {
			return fmt.Errorf("status %d, X-Gen %q", resp.StatusCode, gen)
		}
		if (gen == "3") != (resp.Header.Get("X-Extra") == "yes") {
			return fmt.Errorf("generation %s with X-Extra %q: a mix", gen, resp.Header.Get("X-Extra"))
		}
		gens.Store(gen, true)
		if gen == "3" {
			after.Add(1)
		}
		return nil
	})
	<-reloaded
	for _, g := range []string{"1", "2"} {
		if _, ok := gens.Load(g); !ok {
			t.Errorf("no response of generation %s", g)
		}
	}
	if status, body, err := fetch(t, conns[0], base+"/new"); status != 200 || body != "new route" || err != nil {
		t.Fatalf("the route added by reload 2, kept by 3: %d %q %v", status, body, err)
	}
	checkSets(t, app.Requests(), clients, inFlight)
	if got := h.sessionsOpened("h3"); got != clients {
		t.Fatalf("sessions opened = %v, want %d", got, clients)
	}
	if applied, refused := testutil.ToFloat64(h.srv.metrics.reloads.WithLabelValues("applied")), testutil.ToFloat64(h.srv.metrics.reloads.WithLabelValues("refused")); applied != 2 || refused != 1 {
		t.Fatalf("reloads applied %v, refused %v; want 2, 1", applied, refused)
	}
	t.Logf("%d requests, %d after the last reload", len(app.Requests()), after.Load())
}

// TestReloadChangedUpstreams: a reverse_proxy whose backends change gets a
// pool of its own; a session picks its backend there on its next request,
// and the old pool's health checks stop.
func TestReloadChangedUpstreams(t *testing.T) {
	a1, a2 := startApp(t, "a1", nil), startApp(t, "a2", nil)
	h := startProxy(t, generation("1", "", a1.Addr()), nil)
	c := h.dial(t)
	base := "https://localhost:" + strconv.Itoa(h.port) + "/"
	if r := seen(t, c, h, "c"); r.App != "a1" {
		t.Fatalf("answered by %s", r.App)
	}
	if err := h.srv.Reload(mustParse(t, generation("2", "", a2.Addr()))); err != nil {
		t.Fatal(err)
	}
	if r := seen(t, c, h, "c"); r.App != "a2" {
		t.Fatalf("after the reload, answered by %s", r.App)
	}
	if status, _, err := fetch(t, c, base); status != 200 || err != nil {
		t.Fatal(status, err)
	}
	if len(h.logged("configuration reloaded")) != 1 {
		t.Fatal("no reload log line")
	}
}

// freePort returns a port free on 127.0.0.1 for UDP and TCP (a moment
// ago).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		p := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		u.Close()
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// TestReloadPorts (issue 14): a reload that adds a site on a new port
// opens it (HTTP/3 and TLS over TCP); the port that stays keeps its
// sockets and its connections (the same upstream connection answers); a
// reload that removes the port tells its clients to go away and closes
// it, /healthz still passing; a port in use refuses the reload whole.
func TestReloadPorts(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, generation("1", "", app.Addr()), nil)
	c := h.dial(t)
	first := seen(t, c, h, "c")
	port := freePort(t)
	twoSites := generation("2", "", app.Addr()) + "localhost:" + strconv.Itoa(port) + " {\n\trespond \"second port\"\n}\n"
	if err := h.srv.Reload(mustParse(t, twoSites)); err != nil {
		t.Fatal(err)
	}
	if got := len(h.srv.Listeners()); got != 2 {
		t.Fatalf("%d listeners after adding a port", got)
	}
	if r := seen(t, c, h, "c"); r.Conn != first.Conn {
		t.Fatalf("the kept port's client on upstream connection %d, was %d", r.Conn, first.Conn)
	}
	addr2 := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c2 := h.dialTo(t, addr2)
	if resp, body := do(t, c2, "GET", "https://localhost:"+strconv.Itoa(port)+"/", nil, nil); resp.StatusCode != 200 || body != "second port" {
		t.Fatalf("the new port over HTTP/3: %d %q", resp.StatusCode, body)
	}
	tc, err := tls.Dial("tcp", addr2, h.clientTLS())
	if err != nil {
		t.Fatalf("the new port over TCP: %v", err)
	}
	tc.Close()

	// Removed: its client is told to go away, the port closes.
	if err := h.srv.Reload(mustParse(t, generation("3", "", app.Addr()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c2.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the removed port's client was not told to go away")
	}
	eventually(t, "the removed port to close", func() bool {
		l, err := net.Listen("tcp", addr2)
		if err == nil {
			l.Close()
		}
		return err == nil
	})
	if r := seen(t, c, h, "c"); r.Conn != first.Conn {
		t.Fatalf("after the removal: upstream connection %d, was %d", r.Conn, first.Conn)
	}
	for _, ck := range h.srv.liveness() {
		if ck.err != nil {
			t.Fatalf("/healthz after a port was removed: %s %v", ck.name, ck.err)
		}
	}

	// A port in use: refused whole, nothing bound, the old config serves.
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	bp := busy.LocalAddr().(*net.UDPAddr).Port
	bad := generation("4", "", app.Addr()) + "localhost:" + strconv.Itoa(bp) + " {\n\trespond no\n}\n"
	if err := h.srv.Reload(mustParse(t, bad)); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("a reload onto a port in use: %v", err)
	}
	if got := len(h.srv.Listeners()); got != 1 {
		t.Fatalf("%d listeners after the refused reload", got)
	}
	resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, nil)
	if resp.Header.Get("X-Gen") != "3" {
		t.Fatalf("after the refused reload: X-Gen %q", resp.Header.Get("X-Gen"))
	}
}
