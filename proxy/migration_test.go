package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

// checkSameView asserts the backend saw every request on one upstream TCP
// connection with unchanged forwarding headers naming the client's start
// address.
func checkSameView(t *testing.T, reqs []legacyapp.Request, startPort int) {
	t.Helper()
	first := reqs[0]
	wantFwd := `for="127.0.0.1:` + strconv.Itoa(startPort) + `";host="localhost:` // + port";proto=https
	for i, r := range reqs {
		if r.Conn != first.Conn || r.Remote != first.Remote {
			t.Fatalf("request %d on upstream connection %d (%s), earlier ones on %d (%s)", i, r.Conn, r.Remote, first.Conn, first.Remote)
		}
		if r.ConnRequest != i+1 {
			t.Fatalf("request %d is number %d on its upstream connection: the connection was not kept", i, r.ConnRequest)
		}
		if r.XForwardedFor != "127.0.0.1" {
			t.Fatalf("request %d: X-Forwarded-For %q", i, r.XForwardedFor)
		}
		if !strings.HasPrefix(r.Forwarded, wantFwd) || r.Forwarded != first.Forwarded {
			t.Fatalf("request %d: Forwarded %q, want %q… and unchanged from %q", i, r.Forwarded, wantFwd, first.Forwarded)
		}
	}
}

// TestActiveMigration: a client does requests, moves its QUIC connection to
// a new UDP socket (AddPath → Probe → Switch) and does more, three times
// over. No new handshake happens, every response is right, and the backend
// sees the same upstream TCP connection and the same forwarding headers
// throughout; the proxy reports each path change once.
func TestActiveMigration(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	start := c.LocalAddr()

	var reqs []legacyapp.Request
	for range 3 {
		reqs = append(reqs, seen(t, c, h, "c1"))
	}
	var path []string // the client's addresses, in order
	path = append(path, start.String())
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Migrate(ctx)
		cancel()
		if err != nil {
			t.Fatalf("migration %d: %v", i+1, err)
		}
		if c.LocalAddr().String() == path[len(path)-1] {
			t.Fatal("migration kept the local address")
		}
		path = append(path, c.LocalAddr().String())
		for range 2 {
			reqs = append(reqs, seen(t, c, h, "c1"))
		}
		want := float64(i + 1)
		eventually(t, fmt.Sprintf("%v path changes counted", want), func() bool { return h.pathChanges() == want })
	}

	checkSameView(t, reqs, start.Port)
	if got := len(app.Requests()); got != 9 {
		t.Fatalf("backend saw %d requests, want 9", got)
	}
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("sessions opened = %v, want 1 (a new handshake happened)", got)
	}
	entries := h.logged("client path changed")
	if len(entries) != 3 {
		t.Fatalf("%d path change log lines, want 3", len(entries))
	}
	for i, e := range entries {
		f := e.ContextMap()
		if f["from"] != path[i] || f["to"] != path[i+1] {
			t.Fatalf("path change %d logged %v → %v, want %v → %v", i+1, f["from"], f["to"], path[i], path[i+1])
		}
	}
}

// TestNATRebinding: the client's NAT maps it to a new port mid-connection
// (no client action at all). Same assertions as for an active migration.
func TestNATRebinding(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	relay := startRelay(t, h.addr, impair.Faults{})
	c := h.dialTo(t, relay.Addr().String())
	startPort := int(relay.Mappings()[0].Port())

	var reqs []legacyapp.Request
	for range 3 {
		reqs = append(reqs, seen(t, c, h, "c1"))
	}
	for i := range 2 {
		if err := relay.Rebind(); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			reqs = append(reqs, seen(t, c, h, "c1"))
		}
		want := float64(i + 1)
		eventually(t, fmt.Sprintf("%v path changes", want), func() bool { return h.pathChanges() >= want })
	}
	checkSameView(t, reqs, startPort)
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("sessions opened = %v, want 1", got)
	}
	entries := h.logged("client path changed")
	if len(entries) != 2 {
		t.Fatalf("%d path change log lines, want 2", len(entries))
	}
	if k := entries[0].ContextMap()["kind"]; k != "port" {
		t.Fatalf("kind %v, want port (same IP, new port)", k)
	}
	// Close before the relay goes away, so the server hears of it and
	// shutdown need not wait for a vanished client.
	c.Close()
	eventually(t, "the session to end", func() bool { return testutil.ToFloat64(h.srv.metrics.sessionsActive) == 0 })
}

// concurrencyBarrier holds each client's concurrent requests at the backend
// until all n of a round have arrived, so every round needs exactly n
// upstream connections at once.
type concurrencyBarrier struct {
	mu    sync.Mutex
	n     int
	gates map[string]chan struct{}
	count map[string]int
}

func (b *concurrencyBarrier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("X-Client") + "/" + r.URL.Query().Get("round")
	b.mu.Lock()
	g := b.gates[key]
	if g == nil {
		g = make(chan struct{})
		b.gates[key] = g
	}
	b.count[key]++
	if b.count[key] == b.n {
		close(g)
	}
	b.mu.Unlock()
	select {
	case <-g:
		w.Write([]byte(legacyapp.Seen(r.Context()).App))
	case <-time.After(10 * time.Second):
		http.Error(w, "barrier timeout", http.StatusGatewayTimeout)
	}
}

// TestIsolationUnderLoad: 20 clients, each with 4 concurrent requests, each
// migrating once between rounds, across two backends. No upstream
// connection ever carries two clients' requests; each client keeps exactly
// its set of upstream connections and its backend across the migration.
func TestIsolationUnderLoad(t *testing.T) {
	const clients, streams = 20, 4
	bar := &concurrencyBarrier{n: streams, gates: map[string]chan struct{}{}, count: map[string]int{}}
	app1 := startApp(t, "app1", bar)
	app2 := startApp(t, "app2", bar)
	h := startProxy(t, siteFor("", app1.Addr(), app2.Addr()), nil)

	conns := make([]*h3client.Conn, clients)
	for i := range conns {
		conns[i] = h.dial(t)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			client := "c" + strconv.Itoa(i)
			round := func(r string) {
				var rw sync.WaitGroup
				for range streams {
					rw.Go(func() {
						resp, body := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/?round="+r, nil, map[string]string{"X-Client": client})
						if resp.StatusCode != http.StatusOK {
							t.Errorf("%s round %s: %d %s", client, r, resp.StatusCode, body)
						}
					})
				}
				rw.Wait()
			}
			round("1")
			// No request is in flight on this connection while it switches
			// paths (quic-go pitfall 4); other clients' requests are.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Migrate(ctx); err != nil {
				t.Errorf("%s: migrate: %v", client, err)
				return
			}
			round("2")
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	type upConn struct{ app, remote string }
	clientsOf := map[upConn]map[string]bool{}
	// A client's round 2 starts after its round 1 ended, so arrival order
	// splits its requests into rounds.
	byClient := map[string][]legacyapp.Request{}
	for _, app := range []*legacyapp.App{app1, app2} {
		for _, r := range app.Requests() {
			uc := upConn{r.App, r.Remote}
			if clientsOf[uc] == nil {
				clientsOf[uc] = map[string]bool{}
			}
			clientsOf[uc][r.Client] = true
			byClient[r.Client] = append(byClient[r.Client], r)
		}
	}
	for uc, cs := range clientsOf {
		if len(cs) != 1 {
			t.Fatalf("upstream connection %v carried requests of %d clients: %v", uc, len(cs), cs)
		}
	}
	if len(byClient) != clients {
		t.Fatalf("%d clients reached the backends, want %d", len(byClient), clients)
	}
	for client, reqs := range byClient {
		if len(reqs) != 2*streams {
			t.Fatalf("%s: %d requests, want %d", client, len(reqs), 2*streams)
		}
		r1, r2 := map[upConn]bool{}, map[upConn]bool{}
		apps := map[string]bool{}
		for i, r := range reqs {
			apps[r.App] = true
			if i < streams {
				r1[upConn{r.App, r.Remote}] = true
			} else {
				r2[upConn{r.App, r.Remote}] = true
			}
		}
		if len(apps) != 1 {
			t.Fatalf("%s used backends %v: a session must stay on one", client, apps)
		}
		if len(r1) != streams || len(r2) != streams {
			t.Fatalf("%s: %d and %d upstream connections in its rounds, want %d each", client, len(r1), len(r2), streams)
		}
		for uc := range r2 {
			if !r1[uc] {
				t.Fatalf("%s: after migrating it used upstream connection %v, not one of %v", client, uc, r1)
			}
		}
	}
	if got := h.sessionsOpened("h3"); got != clients {
		t.Fatalf("sessions opened = %v, want %d", got, clients)
	}
	eventually(t, "every migration counted", func() bool { return h.pathChanges() == clients })
	if n1, n2 := len(app1.Requests()), len(app2.Requests()); n1 == 0 || n2 == 0 {
		t.Fatalf("round-robin left a backend idle: %d and %d requests", n1, n2)
	}
}
