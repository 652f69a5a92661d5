package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
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
	checkSets(t, h, app.Requests(), clients, inFlight)
	if got := h.sessionsOpened("h3"); got != clients {
		t.Fatalf("sessions opened = %v, want %d", got, clients)
	}
	if applied, refused := testutil.ToFloat64(h.srv.metrics.reloads.WithLabelValues("applied")), testutil.ToFloat64(h.srv.metrics.reloads.WithLabelValues("refused")); applied != 2 || refused != 1 {
		t.Fatalf("reloads applied %v, refused %v; want 2, 1", applied, refused)
	}
	t.Logf("%d requests, %d after the last reload", len(app.Requests()), after.Load())
}

// TestReloadChangedUpstreams: a reverse_proxy whose one backend is replaced
// keeps its pool, updated in place: its session moves to the new backend
// at its next request, counted with reason "reload".
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
	if n := testutil.ToFloat64(h.srv.upMetrics.SessionMoves.WithLabelValues(a1.Addr(), "reload")); n != 1 {
		t.Fatalf("reload moves %v, want 1", n)
	}
}

// generationWith is generation with a block of reverse_proxy settings
// (block: "lb_policy first"; empty for none).
func generationWith(gen, block string, upstreams ...string) string {
	rp := strings.Join(upstreams, " ")
	if block != "" {
		rp += " {\n\t\t" + block + "\n\t}"
	}
	return generation(gen, "", rp)
}

// slowSeen answers like the legacy app's "/" (what it saw, as JSON) after
// a few milliseconds, so a client's requests overlap at the backend.
func slowSeen(w http.ResponseWriter, r *http.Request) {
	time.Sleep(3 * time.Millisecond)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(legacyapp.Seen(r.Context()))
}

// TestReloadRemovesABackend (issue 14): HTTP/3 clients with two requests
// in flight each, half of them migrating meanwhile, while a reload takes
// backend b out of a reverse_proxy of a and b and adds c. No request
// fails. The sessions on a keep their exact upstream connections (none of
// a's closes, none is added after the reload). Each session on b moves
// once, logged and counted with reason "reload", to a or c: nothing sent
// after the reload reaches b, every b connection closes, and the session
// stays where it moved. New sessions go to a and c. No client handshakes
// again.
//
// Before Pool.Update, the changed reverse_proxy got a new pool: every
// session picked its backend again, a's sessions on new connections.
func TestReloadRemovesABackend(t *testing.T) {
	const clients, inFlight = 8, 2
	a := startApp(t, "a", http.HandlerFunc(slowSeen))
	b := startApp(t, "b", http.HandlerFunc(slowSeen))
	c := startApp(t, "c", http.HandlerFunc(slowSeen))
	h := startProxy(t, generation("1", "", a.Addr(), b.Addr()), nil)
	base := "https://localhost:" + strconv.Itoa(h.port) + "/"
	conns := make([]*h3client.Conn, clients)
	for i := range conns {
		conns[i] = h.dial(t)
	}

	var reloaded atomic.Bool // Reload has returned
	var wg sync.WaitGroup
	for i, conn := range conns {
		migrating := i%2 == 0
		var sent atomic.Int64    // requests sent after the reload
		var migrated atomic.Bool // the client has switched paths
		var onPath atomic.Int64  // requests sent after that
		more := func() bool {
			return !reloaded.Load() || sent.Load() < 20 || migrating && (!migrated.Load() || onPath.Load() < 4)
		}
		for w := range inFlight {
			wg.Go(func() {
				for n := 0; more(); n++ {
					phase := "0"
					if reloaded.Load() {
						phase = "1"
						sent.Add(1)
					}
					if migrated.Load() {
						onPath.Add(1)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					req, _ := http.NewRequestWithContext(ctx, "GET", base, nil)
					req.Header.Set("X-Client", fmt.Sprintf("c%d/%s", i, phase))
					resp, err := conn.RoundTrip(req)
					if err == nil {
						_, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("status %d", resp.StatusCode)
						}
					}
					cancel()
					if err != nil {
						t.Errorf("client %d worker %d request %d (phase %s): %v", i, w, n, phase, err)
						return
					}
				}
			})
		}
		if migrating {
			// Half the clients migrate about when the reload happens; each
			// goes on until requests on its new path have shown the proxy
			// the change.
			wg.Go(func() {
				defer migrated.Store(true)
				time.Sleep(time.Duration(250+10*i) * time.Millisecond)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := conn.Migrate(ctx); err != nil {
					t.Errorf("client %d: migrate: %v", i, err)
				}
			})
		}
	}
	time.Sleep(300 * time.Millisecond)
	if err := h.srv.Reload(mustParse(t, generation("2", "", a.Addr(), c.Addr()))); err != nil {
		t.Errorf("reload: %v", err)
	}
	reloaded.Store(true)
	wg.Wait()
	if t.Failed() {
		return
	}

	// What each client's requests reached: app and upstream connection, and
	// whether they were sent after the reload. (Across backends, arrival
	// order says nothing: a request in flight on b may arrive after the
	// session's next one reached a.)
	type hop struct {
		app, remote string
		after       bool
	}
	hops := map[string][]hop{}
	for _, app := range []*legacyapp.App{a, b, c} {
		for _, r := range app.Requests() {
			client, phase, _ := strings.Cut(r.Client, "/")
			hops[client] = append(hops[client], hop{r.App, r.Remote, phase == "1"})
		}
	}
	if len(hops) != clients {
		t.Fatalf("%d clients reached the backends, want %d", len(hops), clients)
	}
	onA, onB := 0, 0
	for client, hs := range hops {
		apps := map[string]bool{}
		for _, x := range hs {
			apps[x.app] = true
		}
		if !apps["b"] {
			// On a, the kept backend, from start to end.
			onA++
			before, after := map[string]bool{}, map[string]bool{}
			for _, x := range hs {
				if x.app != "a" {
					t.Fatalf("%s, on a, sent a request to %s", client, x.app)
				}
				if x.after {
					after[x.remote] = true
				} else {
					before[x.remote] = true
				}
			}
			if len(after) == 0 {
				t.Fatalf("%s sent nothing after the reload", client)
			}
			for r := range after {
				if !before[r] {
					t.Errorf("%s, on the kept backend a, used upstream connection %s after the reload, not one of %v", client, r, before)
				}
			}
			continue
		}
		onB++
		delete(apps, "b")
		if len(apps) != 1 {
			t.Fatalf("%s left b for %v: want one backend, a or c", client, apps)
		}
		for _, x := range hs {
			if x.after && x.app == "b" {
				t.Fatalf("%s sent a request after the reload to the removed b", client)
			}
		}
	}
	if onA == 0 || onB == 0 {
		t.Fatalf("sessions on a: %d, on b: %d; want some on each", onA, onB)
	}
	if closed := a.ClosedConns(); len(closed) != 0 {
		t.Fatalf("a's upstream connections %v closed: sessions on the kept backend lost them", closed)
	}
	bConns := map[int]bool{}
	for _, r := range b.Requests() {
		bConns[r.Conn] = true
	}
	eventually(t, "every connection to b to close", func() bool { return len(b.ClosedConns()) == len(bConns) })

	moves := h.srv.upMetrics.SessionMoves
	if n := testutil.ToFloat64(moves.WithLabelValues(b.Addr(), "reload")); n != float64(onB) {
		t.Fatalf("%v sessions moved off b with reason reload, want %d", n, onB)
	}
	if n := testutil.CollectAndCount(moves); n != 1 {
		t.Fatalf("%d session move series, want only b's reload moves", n)
	}
	logged := h.logged("session moved")
	if len(logged) != onB {
		t.Fatalf("%d move log lines, want %d", len(logged), onB)
	}
	for _, e := range logged {
		if f := e.ContextMap(); f["from"] != b.Addr() || f["reason"] != "reload" {
			t.Fatalf("move logged %v", f)
		}
	}
	if got := h.sessionsOpened("h3"); got != clients {
		t.Fatalf("sessions opened = %v, want %d: a client handshook again", got, clients)
	}
	eventually(t, "the migrations counted", func() bool { return h.pathChanges() == clients/2 })

	// New sessions: a and c, never b.
	seenApps := map[string]int{}
	for range 6 {
		seenApps[seen(t, h.dial(t), h, "new").App]++
	}
	if seenApps["b"] != 0 || seenApps["a"] == 0 || seenApps["c"] == 0 {
		t.Fatalf("new sessions went to %v, want a and c", seenApps)
	}
	if len(h.logged("upstream configuration updated")) != 1 {
		t.Fatal("the pool update was not logged")
	}
}

// TestReloadKeepsAWebSocketOnARemovedBackend (issue 14): a WebSocket over
// HTTP/3 to a backend that a reload removes keeps its conversation going,
// on its upstream connection, while the session's next request moves to
// the remaining backend; it ends when the client closes it.
func TestReloadKeepsAWebSocketOnARemovedBackend(t *testing.T) {
	echo := &wsEcho{}
	both := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			echo.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(legacyapp.Seen(r.Context()))
	})
	a1, a2 := startApp(t, "a1", both), startApp(t, "a2", both)
	h := startProxy(t, generationWith("1", "lb_policy first", a1.Addr(), a2.Addr()), nil)
	conn := h.dial(t)
	if r := seen(t, conn, h, "c"); r.App != "a1" {
		t.Fatalf("answered by %s", r.App)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := conn.WebSocket(ctx, "https://localhost:"+strconv.Itoa(h.port)+"/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	br := bufio.NewReader(ws)
	talk := func(msg string) {
		t.Helper()
		if err := wsWrite(ws, opText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if op, got, err := wsRead(br); err != nil || op != opText || string(got) != msg {
			t.Fatalf("%q: op %d %q %v", msg, op, got, err)
		}
	}
	talk("before")
	if err := h.srv.Reload(mustParse(t, generationWith("2", "lb_policy first", a2.Addr()))); err != nil {
		t.Fatal(err)
	}
	talk("after the reload")
	if r := seen(t, conn, h, "c"); r.App != "a2" {
		t.Fatalf("after the reload, answered by %s", r.App)
	}
	talk("after the move")
	if n := testutil.ToFloat64(h.srv.upMetrics.SessionMoves.WithLabelValues(a1.Addr(), "reload")); n != 1 {
		t.Fatalf("reload moves %v, want 1", n)
	}
	if echo.ended.Load() != 0 {
		t.Fatal("the WebSocket's backend conversation ended")
	}
	wsWrite(ws, opClose, []byte{0x03, 0xe8})
	if op, _, err := wsRead(br); err != nil || op != opClose {
		t.Fatalf("close: op %d, %v", op, err)
	}
	eventually(t, "the backend's conversation to end", func() bool { return echo.ended.Load() == 1 })
	if n := len(a1.Requests()); n != 2 {
		t.Fatalf("a1 saw %d requests, want the first and the upgrade", n)
	}
}

// TestRefusedReloadChangesNoPool (issue 14): a reload that changes a
// reverse_proxy's backends, and fails further on (a later
// reverse_proxy's tls_ca file is missing), is refused whole: the changed
// pool was only prepared, so its session stays on its backend over its
// connection, nothing moves and the pool logs no update. The same change
// without the failure then applies.
func TestRefusedReloadChangesNoPool(t *testing.T) {
	a, b := startApp(t, "a", http.HandlerFunc(slowSeen)), startApp(t, "b", http.HandlerFunc(slowSeen))
	app := func(upstreams string) string {
		return "\thandle /app* {\n\t\treverse_proxy " + upstreams + " {\n\t\t\tlb_policy first\n\t\t}\n\t}\n"
	}
	h := startProxy(t, generation("1", app(b.Addr()+" "+a.Addr()), a.Addr()), nil)
	conn := h.dial(t)
	get := func() legacyapp.Request {
		t.Helper()
		resp, body := do(t, conn, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/app/", nil, nil)
		var r legacyapp.Request
		if err := json.Unmarshal([]byte(body), &r); resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET /app/: %d %q %v", resp.StatusCode, body, err)
		}
		return r
	}
	first := get()
	if first.App != "b" {
		t.Fatalf("answered by %s", first.App)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	bad := generation("2", app(a.Addr())+"\thandle /x* {\n\t\treverse_proxy https://127.0.0.1:1 {\n\t\t\ttls_ca "+missing+"\n\t\t}\n\t}\n", a.Addr())
	if err := h.srv.Reload(mustParse(t, bad)); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("reload with a missing tls_ca file: %v", err)
	}
	again := get()
	if again.App != "b" || again.Remote != first.Remote || again.ConnRequest != 2 {
		t.Fatalf("after the refused reload: %s on %s (request %d), before b on %s", again.App, again.Remote, again.ConnRequest, first.Remote)
	}
	if n := len(h.logged("upstream configuration updated")) + len(h.logged("session moved")); n != 0 {
		t.Fatalf("the refused reload updated a pool (%d log lines)", n)
	}
	if err := h.srv.Reload(mustParse(t, generation("3", app(a.Addr()), a.Addr()))); err != nil {
		t.Fatal(err)
	}
	if r := get(); r.App != "a" {
		t.Fatalf("after the reload that removed b: answered by %s", r.App)
	}
	if n := testutil.ToFloat64(h.srv.upMetrics.SessionMoves.WithLabelValues(b.Addr(), "reload")); n != 1 {
		t.Fatalf("reload moves %v, want 1", n)
	}
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
	port := edgetest.FreePort(t)
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

// TestReloadAddsADrainingPortBack: a port a reload removed is added back
// by the next one while it still drains (a request in flight there): the
// reload is not refused (the draining port keeps its UDP socket, so binding
// anew would fail), the new configuration serves new connections on the
// same sockets, and the request in flight on the drained connection
// finishes. Removed once more, the port closes for good.
func TestReloadAddsADrainingPortBack(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	entered := make(chan struct{}, 1)
	slow := startApp(t, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "slow done")
	}))
	app := startApp(t, "app", nil)
	h := startProxy(t, generation("1", "", app.Addr()), nil)
	port := edgetest.FreePort(t)
	withPort := func(gen string) string {
		return generation(gen, "", app.Addr()) + "localhost:" + strconv.Itoa(port) + " {\n\theader X-Gen " + gen +
			"\n\treverse_proxy " + slow.Addr() + "\n}\n"
	}
	if err := h.srv.Reload(mustParse(t, withPort("2"))); err != nil {
		t.Fatal(err)
	}
	addr2 := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url2 := "https://localhost:" + strconv.Itoa(port) + "/"
	old := h.dialTo(t, addr2)
	inFlight := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url2, nil)
		resp, err := old.RoundTrip(req)
		if err != nil {
			inFlight <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		inFlight <- string(b)
	}()
	<-entered

	// Removed: it drains, its request in flight.
	if err := h.srv.Reload(mustParse(t, generation("3", "", app.Addr()))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removed port's TCP socket to close", func() bool {
		l, err := net.Listen("tcp", addr2)
		if err == nil {
			l.Close()
		}
		return err == nil
	})
	// Added back while the request is still in flight.
	if err := h.srv.Reload(mustParse(t, withPort("4"))); err != nil {
		t.Fatalf("adding the draining port back: %v", err)
	}
	fresh := h.dialTo(t, addr2)
	once.Do(func() { close(release) }) // the new client's request is not held
	resp, body := do(t, fresh, "GET", url2, nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("X-Gen") != "4" || body != "slow done" {
		t.Fatalf("a new client of the port added back: %d X-Gen %q %q", resp.StatusCode, resp.Header.Get("X-Gen"), body)
	}
	tc, err := tls.Dial("tcp", addr2, h.clientTLS())
	if err != nil {
		t.Fatalf("the port added back over TCP: %v", err)
	}
	tc.Close()
	select {
	case got := <-inFlight:
		if got != "slow done" {
			t.Fatalf("the request in flight on the drained connection: %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request in flight on the drained connection did not finish")
	}
	if h.logs.FilterMessageSnippet("port added back while it drained").Len() == 0 {
		t.Fatal("no log line for the port added back")
	}

	// Removed again: the new client is told to go away, and the port
	// closes for good (UDP too) once its connections are gone.
	if err := h.srv.Reload(mustParse(t, generation("5", "", app.Addr()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fresh.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the port's client was not told to go away")
	}
	old.Close()
	eventually(t, "the port's UDP socket to close", func() bool {
		u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr2)))
		if err == nil {
			u.Close()
		}
		return err == nil
	})
}
