package upstream

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

// slowBackend answers "/" with "NAME REMOTEADDR", "/slow" with "NAME
// REMOTEADDR part1 " at once and "part2" once release is closed, and an
// Upgrade request with a 101, then echoes what it reads.
type slowBackend struct {
	*backend
	release chan struct{}
	slow    chan string // the connection of each /slow request, when it arrived
}

func newSlowBackend(t *testing.T, name string) *slowBackend {
	t.Helper()
	sb := &slowBackend{release: make(chan struct{}), slow: make(chan string, 16)}
	sb.backend = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Upgrade") != "":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			for {
				line, err := brw.ReadString('\n')
				if err != nil {
					return
				}
				brw.WriteString(name + " " + line)
				brw.Flush()
			}
		case r.URL.Path == "/slow":
			sb.slow <- r.RemoteAddr
			io.WriteString(w, name+" "+r.RemoteAddr+" part1 ")
			w.(http.Flusher).Flush()
			select {
			case <-sb.release:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, "part2")
		default:
			io.WriteString(w, name+" "+r.RemoteAddr)
		}
	})
	return sb
}

// startSlow sends GET /slow on l and returns its response once the first
// part has been read, and that part.
func startSlow(t *testing.T, l *Lease) (*http.Response, string) {
	t.Helper()
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodGet, "/slow", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString(' ')
	if err != nil {
		t.Fatal(err)
	}
	second, err := br.ReadString(' ')
	if err != nil {
		t.Fatal(err)
	}
	third, err := br.ReadString(' ')
	if err != nil {
		t.Fatal(err)
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{br, resp.Body}
	return resp, first + second + third
}

func reloadMoves(m *Metrics, from string) float64 {
	return testutil.ToFloat64(m.SessionMoves.WithLabelValues(from, moveReload))
}

// TestUpdateKeepsBackendsThatStay: an Update that keeps a pool's backends
// (new settings, a policy change, a backend added) leaves every session on
// its backend over its very connections, keeps the backends' state (the
// same Backend, its passive failures, its lease count), and moves nobody;
// new sessions reach the added backend.
func TestUpdateKeepsBackendsThatStay(t *testing.T) {
	b0, b1, b2 := namedBackend(t, "b0"), namedBackend(t, "b1"), namedBackend(t, "b2")
	p, m := newPool(t, Config{Backends: addrsOf(b0, b1), Passive: PassiveHealth{FailDuration: time.Minute, MaxFails: 3}})
	p.now = newFakeClock().Now
	before := p.Backends()
	var leases []*Lease
	var conns []string
	for i := range 4 {
		l := p.Lease(uint64(i), nil)
		defer l.Close()
		_, c := hit(t, l)
		leases, conns = append(leases, l), append(conns, c)
	}
	before[1].fail(failStatus, "test")

	if err := p.Update(Config{
		Backends: addrsOf(b1, b0, b2), Policy: LeastConn, MaxConnsPerSession: 2,
		ResponseHeaderTimeout: time.Minute, Passive: PassiveHealth{FailDuration: time.Minute, MaxFails: 3},
	}); err != nil {
		t.Fatal(err)
	}
	after := p.Backends()
	if after[0] != before[1] || after[1] != before[0] || after[2].Addr != b2.addr() {
		t.Fatalf("backends after the update: %v, before %v", after, before)
	}
	if n := len(after[0].fails); n != 1 {
		t.Fatalf("b1 has %d passive failures, want the 1 it had", n)
	}
	if after[0].Leases() != 2 || after[1].Leases() != 2 || after[2].Leases() != 0 {
		t.Fatalf("leases %d %d %d", after[0].Leases(), after[1].Leases(), after[2].Leases())
	}
	for i, l := range leases {
		for range 3 {
			name, c := hit(t, l)
			if want := []string{"b0", "b1"}[i%2]; name != want || c != conns[i] {
				t.Fatalf("lease %d: answered by %s on %s, before by %s on %s", i, name, c, want, conns[i])
			}
		}
	}
	// least_conn: the added backend has no session.
	l := p.Lease(9, nil)
	defer l.Close()
	if name, _ := hit(t, l); name != "b2" {
		t.Fatalf("a new session went to %s, want the added b2", name)
	}
	for _, b := range []*backend{b0, b1} {
		if n := movesFrom(m, b.addr()); n != 0 {
			t.Fatalf("%v moves off %s", n, b.addr())
		}
		if n := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "new")); n != 2 {
			t.Fatalf("%v connections opened to %s, want the 2 of before", n, b.addr())
		}
	}
}

// TestUpdateMovesSessionsOffARemovedBackend: an Update removes b0. An
// idle session's connection closes at once; a session's request in flight
// finishes on b0 over its connection, which then closes. Each session
// moves once, at its next request (also when that comes while another is
// still in flight), logged and counted with reason "reload"; no request
// fails and nothing new reaches b0.
func TestUpdateMovesSessionsOffARemovedBackend(t *testing.T) {
	b0, b1, b2 := newSlowBackend(t, "b0"), namedBackend(t, "b1"), namedBackend(t, "b2")
	p, m, logs := newObservedPool(t, Config{Backends: addrsOf(b0.backend, b1), Policy: First})
	old := p.Backends()[0]
	idle, busy, eager := p.Lease(1, nil), p.Lease(2, nil), p.Lease(3, nil)
	for _, l := range []*Lease{idle, busy, eager} {
		defer l.Close()
	}
	_, idleConn := hit(t, idle)
	_, busyConn := hit(t, busy)
	_, eagerConn := hit(t, eager)
	busyResp, part1 := startSlow(t, busy)
	eagerResp, _ := startSlow(t, eager)
	if part1 != "b0 "+busyConn+" part1 " {
		t.Fatalf("in flight: %q on another connection than %s", part1, busyConn)
	}

	if err := p.Update(Config{Backends: addrsOf(b1, b2), Policy: First}); err != nil {
		t.Fatal(err)
	}
	if !old.removed.Load() {
		t.Fatal("b0 not marked removed")
	}
	eventually(t, "b0 to see the idle session's connection close", func() bool { return b0.isClosed(idleConn) })
	if b0.isClosed(busyConn) || b0.isClosed(eagerConn) {
		t.Fatal("a connection with a request in flight was closed")
	}
	if busy.Conns() != 1 || idle.Conns() != 0 {
		t.Fatalf("connections: busy session %d, idle one %d", busy.Conns(), idle.Conns())
	}

	// The eager session's next request goes to b1 now, its request in
	// flight still on b0.
	if name, _ := hit(t, eager); name != "b1" {
		t.Fatalf("a request after the update went to %s", name)
	}
	if eager.Backend().Addr != b1.addr() || busy.Backend() != old {
		t.Fatalf("sessions on %s and %s", eager.Backend().Addr, busy.Backend().Addr)
	}

	close(b0.release)
	for _, r := range []*http.Response{busyResp, eagerResp} {
		rest, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil || string(rest) != "part2" {
			t.Fatalf("the rest of a request in flight on b0: %q %v", rest, err)
		}
	}
	for _, c := range []string{busyConn, eagerConn} {
		eventually(t, "b0 to see "+c+" close", func() bool { return b0.isClosed(c) })
	}
	if busy.Conns() != 0 {
		t.Fatalf("the busy session holds %d connections after its request", busy.Conns())
	}
	if n := reloadMoves(m, b0.addr()); n != 1 {
		t.Fatalf("%v reload moves before the sessions' next requests, want 1 (eager)", n)
	}
	for _, l := range []*Lease{idle, busy, eager} {
		for range 2 {
			if name, _ := hit(t, l); name != "b1" {
				t.Fatalf("after the update: answered by %s", name)
			}
		}
	}
	if n := reloadMoves(m, b0.addr()); n != 3 {
		t.Fatalf("%v reload moves, want 3", n)
	}
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b0.addr(), reasonMoved)); n != 3 {
		t.Fatalf("%v connections to b0 closed as moved, want 3", n)
	}
	if n := len(b0.conns()); n != 3 {
		t.Fatalf("b0 saw %d connections, want only the 3 of before", n)
	}
	e := logged(logs, "session moved")
	if len(e) != 3 {
		t.Fatalf("%d move log lines, want 3", len(e))
	}
	for _, x := range e {
		if field(x, "reason") != moveReload || field(x, "from") != b0.addr() || field(x, "to") != b1.addr() {
			t.Fatalf("move logged %v", x.ContextMap())
		}
	}
	if old.Leases() != 0 || p.Backends()[0].Leases() != 3 {
		t.Fatalf("leases: b0 %d, b1 %d", old.Leases(), p.Backends()[0].Leases())
	}
	if n := len(old.leaseList()); n != 0 {
		t.Fatalf("b0 still lists %d leases", n)
	}
	if len(logged(logs, "upstream configuration updated")) != 1 {
		t.Fatal("the update was not logged")
	}
}

// TestUpdateMoveFollowsThePolicy: a session whose backend is removed moves
// where its policy sends its next request, as a new session with that
// request would go: the header policy's rendezvous hash of its value, not
// round robin.
func TestUpdateMoveFollowsThePolicy(t *testing.T) {
	bs := []*backend{namedBackend(t, "b0"), namedBackend(t, "b1"), namedBackend(t, "b2"), namedBackend(t, "b3")}
	cfg := Config{Backends: addrsOf(bs...), Policy: Header, PolicyKey: "X-User"}
	p, _ := newPool(t, cfg)
	req := func(v string) *http.Request {
		r := newReq(t, context.Background(), http.MethodGet, "/", nil, 0)
		r.Header.Set("X-User", v)
		return r
	}
	// Sessions of many values, and the backends they hash to.
	leases := map[string]*Lease{}
	on := map[string]string{}
	for i := range 40 {
		v := "user" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		l := p.Lease(uint64(i), req(v))
		defer l.Close()
		leases[v], on[v] = l, l.Backend().Addr
	}
	removed := bs[1].addr()
	cfg.Backends = addrsOf(bs[0], bs[2], bs[3])
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for v, l := range leases {
		resp, err := l.RoundTrip(req(v))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		fresh := p.Lease(99, req(v))
		want := fresh.Backend().Addr
		fresh.Close()
		switch got := l.Backend().Addr; {
		case on[v] != removed && got != on[v]:
			t.Fatalf("%s moved from %s, which stayed, to %s", v, on[v], got)
		case on[v] == removed && got != want:
			t.Fatalf("%s moved to %s; a new session of it goes to %s", v, got, want)
		case on[v] == removed:
			moved++
		}
	}
	if moved == 0 {
		t.Fatal("no session was on the removed backend")
	}
}

// TestUpdateWaitingRequestMovesTheSession: a session at its connection
// bound on a removed backend, with a request waiting for a connection,
// moves at once: the waiting request goes to the new backend rather than
// on a connection to the removed one.
func TestUpdateWaitingRequestMovesTheSession(t *testing.T) {
	b0, b1 := newSlowBackend(t, "b0"), namedBackend(t, "b1")
	p, m := newPool(t, Config{Backends: addrsOf(b0.backend, b1), Policy: First, MaxConnsPerSession: 1})
	l := p.Lease(1, nil)
	defer l.Close()
	resp, _ := startSlow(t, l)
	waited := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		body, err := tryGet(t, ctx, l, "/")
		if err != nil {
			body = err.Error()
		}
		waited <- body
	}()
	eventually(t, "the second request to wait", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.waiters) == 1
	})
	if err := p.Update(Config{Backends: addrsOf(b1), Policy: First}); err != nil {
		t.Fatal(err)
	}
	if got := <-waited; !strings.HasPrefix(got, "b1 ") {
		t.Fatalf("the waiting request: %q, want b1's answer", got)
	}
	close(b0.release)
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(rest) != "part2" {
		t.Fatalf("the request in flight: %q %v", rest, err)
	}
	if n := reloadMoves(m, b0.addr()); n != 1 {
		t.Fatalf("%v reload moves, want 1", n)
	}
}

// TestUpdateKeepsADedicatedConnectionToARemovedBackend: a WebSocket-style
// upgraded connection to a backend an Update removes keeps working while
// the session moves for its other requests, until it is closed.
func TestUpdateKeepsADedicatedConnectionToARemovedBackend(t *testing.T) {
	b0, b1 := newSlowBackend(t, "b0"), namedBackend(t, "b1")
	p, m := newPool(t, Config{Backends: addrsOf(b0.backend, b1), Policy: First})
	l := p.Lease(1, nil)
	defer l.Close()
	req := newReq(t, context.Background(), http.MethodGet, "/ws", nil, 0)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "test")
	resp, d, err := l.Upgrade(req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	defer d.Close()
	br := bufio.NewReader(d)
	echo := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(d, msg+"\n"); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != "b0 "+msg+"\n" {
			t.Fatalf("echo of %q: %q %v", msg, got, err)
		}
	}
	echo("before")

	if err := p.Update(Config{Backends: addrsOf(b1), Policy: First}); err != nil {
		t.Fatal(err)
	}
	echo("after the update")
	if name, _ := hit(t, l); name != "b1" {
		t.Fatalf("a request after the update went to %s", name)
	}
	echo("after the move")
	if n := reloadMoves(m, b0.addr()); n != 1 {
		t.Fatalf("%v reload moves, want 1", n)
	}
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b0.addr(), "dedicated_done")); n != 0 {
		t.Fatalf("the dedicated connection was closed (%v)", n)
	}
	d.Close()
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b0.addr(), "dedicated_done")); n != 1 {
		t.Fatalf("dedicated closes %v, want 1", n)
	}
}

// TestUpdateTLSChangeRenewsConnections: an Update that changes the TLS
// settings (here the server name) keeps each session on its backend's
// address but not on connections made under the old settings: it moves
// (reason "reload") to the new backend of the same address, over a new
// connection.
func TestUpdateTLSChangeRenewsConnections(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "backend-ca")
	cert := ca.IssueServer(t, "localhost", "app.internal", "127.0.0.1")
	tb0 := newTLSBackend(t, cert, nil, nil)
	tb1 := newTLSBackend(t, cert, nil, nil)
	p, m := newPool(t, Config{Backends: addrsOf(tb0.backend, tb1.backend), TLS: &TLS{RootCAs: ca.Pool()}})
	l0, l1 := p.Lease(0, nil), p.Lease(1, nil)
	defer l0.Close()
	defer l1.Close()
	c0, c1 := get(t, l0, "/"), get(t, l1, "/")

	if err := p.Update(Config{Backends: addrsOf(tb0.backend, tb1.backend), TLS: &TLS{RootCAs: ca.Pool(), ServerName: "app.internal"}}); err != nil {
		t.Fatal(err)
	}
	n0, n1 := get(t, l0, "/"), get(t, l1, "/")
	if n0 == c0 || n1 == c1 {
		t.Fatal("a session kept a connection made under the old TLS settings")
	}
	if l0.Backend().Addr != tb0.addr() || l1.Backend().Addr != tb1.addr() || l0.Backend() != p.Backends()[0] {
		t.Fatalf("sessions on %s and %s, want their own addresses in the new configuration", l0.Backend().Addr, l1.Backend().Addr)
	}
	if sni := tb0.state(t, strings.TrimPrefix(n0, "ok ")).ServerName; sni != "app.internal" {
		t.Fatalf("SNI %q after the update", sni)
	}
	if n := reloadMoves(m, tb0.addr()) + reloadMoves(m, tb1.addr()); n != 2 {
		t.Fatalf("%v reload moves, want 2", n)
	}
	// The same TLS settings again, read anew (an equal root pool): kept.
	if err := p.Update(Config{Backends: addrsOf(tb0.backend, tb1.backend), TLS: &TLS{RootCAs: ca.Pool(), ServerName: "app.internal"}}); err != nil {
		t.Fatal(err)
	}
	if again := get(t, l0, "/"); again != n0 {
		t.Fatalf("equal TLS settings renewed the connection: %s, was %s", again, n0)
	}
}

// TestUpdateHealthSettingsInPlace: health checks turned on by an Update of
// a started pool start at once (a backend failing them is left by its
// session, reason "unhealthy"); turned off, the backend they had failed is
// healthy again; a backend added while they run is checked at once.
func TestUpdateHealthSettingsInPlace(t *testing.T) {
	b0, b1, b2 := newHealthBackend(t, "b0"), newHealthBackend(t, "b1"), newHealthBackend(t, "b2")
	cfg := Config{Backends: addrsOf(b0.backend, b1.backend), Policy: First}
	p, m := newPool(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.Start(ctx)
	l := p.Lease(0, nil)
	defer l.Close()
	hit(t, l)
	b0.status.Store(http.StatusServiceUnavailable)

	cfg.Health = ActiveHealth{URI: "/health", Interval: time.Hour}
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first check to fail b0", func() bool { return !p.Backends()[0].Healthy() })
	if name, _ := hit(t, l); name != "b1" {
		t.Fatalf("answered by %s, want b1", name)
	}
	if n := testutil.ToFloat64(m.SessionMoves.WithLabelValues(b0.addr(), moveUnhealthy)); n != 1 {
		t.Fatalf("unhealthy moves %v", n)
	}

	cfg.Backends = addrsOf(b0.backend, b1.backend, b2.backend)
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the added backend's first check", func() bool { return b2.checkCount() == 1 })

	cfg.Health = ActiveHealth{}
	if err := p.Update(cfg); err != nil {
		t.Fatal(err)
	}
	if !p.Backends()[0].Healthy() {
		t.Fatal("b0 still down for checks that are off")
	}
	p.mu.Lock()
	running := p.stop != nil
	p.mu.Unlock()
	if running {
		t.Fatal("the checker runs with no health URI")
	}
}

// TestPrepareChangesNothing: Prepare checks a configuration without
// touching the pool; an invalid one fails Update, and the pool serves on
// as it was.
func TestPrepareChangesNothing(t *testing.T) {
	b0, b1 := namedBackend(t, "b0"), namedBackend(t, "b1")
	p, _ := newPool(t, Config{Backends: addrsOf(b0)})
	l := p.Lease(0, nil)
	defer l.Close()
	_, conn := hit(t, l)
	ch, err := p.Prepare(Config{Backends: addrsOf(b1)})
	if err != nil {
		t.Fatal(err)
	}
	if name, c := hit(t, l); name != "b0" || c != conn || p.Backends()[0].removed.Load() {
		t.Fatalf("Prepare changed the pool: %s %s", name, c)
	}
	for _, bad := range []Config{{}, {Backends: []string{"no-port"}}, {Backends: addrsOf(b1), Policy: Header}} {
		if err := p.Update(bad); err == nil {
			t.Fatalf("Update(%+v) succeeded", bad)
		}
	}
	if name, c := hit(t, l); name != "b0" || c != conn {
		t.Fatalf("a failed Update changed the pool: %s %s", name, c)
	}
	ch.Apply()
	if name, _ := hit(t, l); name != "b1" {
		t.Fatalf("after Apply: %s", name)
	}
}

// TestUpdateLeaksNothing: many updates that remove and add backends under
// sessions with requests, health checks running, leave no connection
// open once the sessions close (the process's file descriptors are back
// to where they were) and no goroutine (goleak, in TestMain).
func TestUpdateLeaksNothing(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts /proc/self/fd")
	}
	bs := []*healthBackend{newHealthBackend(t, "b0"), newHealthBackend(t, "b1"), newHealthBackend(t, "b2")}
	p, _ := newPool(t, Config{Backends: addrsOf(bs[0].backend), Health: ActiveHealth{URI: "/health", Interval: 5 * time.Millisecond}})
	fds := openFDs(t)
	p.Start(context.Background())
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Go(func() {
			l := p.Lease(uint64(i), nil)
			defer l.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := tryGet(t, context.Background(), l, "/"); err != nil {
					t.Errorf("lease %d: %v", i, err)
					return
				}
			}
		})
	}
	for i := range 30 {
		cfg := Config{Backends: addrsOf(bs[i%3].backend, bs[(i+1)%3].backend), Health: ActiveHealth{URI: "/health", Interval: 5 * time.Millisecond}}
		if i%2 == 1 {
			cfg.Backends = cfg.Backends[:1]
		}
		if err := p.Update(cfg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	p.Close()
	eventually(t, "every connection to close", func() bool { return openFDs(t) <= fds })
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
