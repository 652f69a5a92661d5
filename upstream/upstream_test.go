package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is a real HTTP/1.1 server on loopback that records which TCP
// connection (the proxy side's address) carried each request, and when each
// connection closed.
type backend struct {
	*httptest.Server
	mu      sync.Mutex
	seen    []string // RemoteAddr per request, in arrival order
	closed  map[string]bool
	handler http.HandlerFunc
}

func newBackend(t *testing.T, h http.HandlerFunc) *backend {
	t.Helper()
	return startBackend(t, h, nil)
}

// startBackend is newBackend, over TLS with conf when conf is set, with
// the server's settings changed by setup before it starts.
func startBackend(t *testing.T, h http.HandlerFunc, conf *tls.Config, setup ...func(*http.Server)) *backend {
	t.Helper()
	b := &backend{closed: map[string]bool{}, handler: h}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.seen = append(b.seen, r.RemoteAddr)
		b.mu.Unlock()
		if b.handler != nil {
			b.handler(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok "+r.Method+" "+r.URL.RequestURI())
	}))
	b.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed || s == http.StateHijacked {
			b.mu.Lock()
			b.closed[c.RemoteAddr().String()] = true
			b.mu.Unlock()
		}
	}
	for _, f := range setup {
		f(b.Config)
	}
	if conf != nil {
		b.TLS = conf
		// Handshakes the tests make fail are logged by the test's client.
		b.Config.ErrorLog = log.New(io.Discard, "", 0)
		b.StartTLS()
	} else {
		b.Start()
	}
	t.Cleanup(b.Close)
	return b
}

func (b *backend) addr() string { return b.Listener.Addr().String() }

func (b *backend) conns() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := map[string]int{}
	for _, a := range b.seen {
		m[a]++
	}
	return m
}

func (b *backend) isClosed(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed[addr]
}

func newPool(t *testing.T, cfg Config) (*Pool, *Metrics) {
	t.Helper()
	p, m, _ := newObservedPool(t, cfg)
	return p, m
}

// newObservedPool is newPool that also records the pool's log entries (at
// debug level and above) for the test to look at.
func newObservedPool(t *testing.T, cfg Config) (*Pool, *Metrics, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	m := NewMetrics(nil)
	p, err := New(cfg, zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())), m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, m, logs
}

func get(t *testing.T, l *Lease, path string) string {
	t.Helper()
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodGet, path, nil, 0))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", path, err)
	}
	return string(b)
}

func newReq(t *testing.T, ctx context.Context, method, path string, body io.ReadCloser, n int64) *http.Request {
	t.Helper()
	u, err := url.ParseRequestURI(path)
	if err != nil {
		t.Fatal(err)
	}
	return (&http.Request{Method: method, URL: u, Host: "app.test", Header: http.Header{}, Body: body, ContentLength: n}).WithContext(ctx)
}

// eventually polls cond until it holds or a deadline passes.
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

func TestSequentialRequestsUseOneConnection(t *testing.T) {
	b := newBackend(t, nil)
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	for i := range 20 {
		if got, want := get(t, l, "/x"), "ok GET /x"; got != want {
			t.Fatalf("request %d: body %q, want %q", i, got, want)
		}
	}
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1: %v", len(c), c)
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "new")); got != 1 {
		t.Fatalf("conns opened = %v, want 1", got)
	}
	var addr string
	for a := range b.conns() {
		addr = a
	}
	l.Close()
	eventually(t, "backend to see the connection close", func() bool { return b.isClosed(addr) })
	if _, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0)); err != ErrLeaseClosed {
		t.Fatalf("request after Close: %v, want ErrLeaseClosed", err)
	}
}

// barrier makes a backend hold n concurrent requests of one key until all n
// have arrived, so a test knows exactly how many connections were in use.
type barrier struct {
	mu      sync.Mutex
	waiting map[string]chan struct{}
	count   map[string]int
}

func newBarrier() *barrier {
	return &barrier{waiting: map[string]chan struct{}{}, count: map[string]int{}}
}

func (br *barrier) wait(key string, n int) {
	br.mu.Lock()
	ch, ok := br.waiting[key]
	if !ok {
		ch = make(chan struct{})
		br.waiting[key] = ch
	}
	br.count[key]++
	if br.count[key] == n {
		close(ch)
	}
	br.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
	}
}

func TestConcurrentRequestsKeepAStableSet(t *testing.T) {
	br := newBarrier()
	var mu sync.Mutex
	byRound := map[string]map[string]bool{}
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		round := r.URL.Query().Get("round")
		mu.Lock()
		if byRound[round] == nil {
			byRound[round] = map[string]bool{}
		}
		byRound[round][r.RemoteAddr] = true
		mu.Unlock()
		br.wait(round, 4)
		io.WriteString(w, "ok")
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	for _, round := range []string{"1", "2", "3"} {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if got := get(t, l, "/?round="+round); got != "ok" {
					t.Errorf("round %s: body %q", round, got)
				}
			})
		}
		wg.Wait()
	}
	if len(byRound["1"]) != 4 {
		t.Fatalf("round 1 used %d connections, want 4", len(byRound["1"]))
	}
	for _, round := range []string{"2", "3"} {
		for a := range byRound[round] {
			if !byRound["1"][a] {
				t.Fatalf("round %s used connection %s not in round 1's set %v", round, a, byRound["1"])
			}
		}
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "new")); got != 4 {
		t.Fatalf("conns opened = %v, want 4", got)
	}
}

func TestRequestsBeyondTheBoundWait(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	active, maxActive := 0, 0
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		active++
		maxActive = max(maxActive, active)
		mu.Unlock()
		<-release
		mu.Lock()
		active--
		mu.Unlock()
		io.WriteString(w, "ok")
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, MaxConnsPerSession: 2})
	l := p.Lease(1, nil)
	defer l.Close()
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() { get(t, l, "/") })
	}
	eventually(t, "two requests at the backend", func() bool { mu.Lock(); defer mu.Unlock(); return active == 2 })
	close(release)
	wg.Wait()
	if maxActive != 2 {
		t.Fatalf("max concurrent upstream requests = %d, want 2", maxActive)
	}
	if c := b.conns(); len(c) != 2 {
		t.Fatalf("backend saw %d connections, want 2", len(c))
	}
}

func TestWaitingRequestHonoursItsContext(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "ok")
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, MaxConnsPerSession: 1})
	l := p.Lease(1, nil)
	defer l.Close()
	done := make(chan struct{})
	go func() { defer close(done); get(t, l, "/slow") }()
	eventually(t, "slow request at the backend", func() bool { return len(b.conns()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.RoundTrip(newReq(t, ctx, "GET", "/", nil, 0)); err != context.DeadlineExceeded {
		t.Fatalf("waiting request: %v, want context.DeadlineExceeded", err)
	}
	close(release)
	<-done
	if got := get(t, l, "/after"); got != "ok" {
		t.Fatalf("after: %q", got)
	}
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1", len(c))
	}
}

func TestLeasesNeverShareConnections(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.RemoteAddr)
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l1, l2 := p.Lease(1, nil), p.Lease(2, nil)
	defer l1.Close()
	defer l2.Close()
	a1, a2 := map[string]bool{}, map[string]bool{}
	for range 10 {
		a1[get(t, l1, "/")] = true
		a2[get(t, l2, "/")] = true
	}
	if len(a1) != 1 || len(a2) != 1 {
		t.Fatalf("each lease should use one connection: %v %v", a1, a2)
	}
	for a := range a1 {
		if a2[a] {
			t.Fatalf("connection %s used by two leases", a)
		}
	}
}

func TestRoundRobinPicksABackendPerLease(t *testing.T) {
	b1 := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b1") })
	b2 := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b2") })
	p, _ := newPool(t, Config{Backends: []string{b1.addr(), b2.addr()}})
	var got []string
	for i := range 4 {
		l := p.Lease(uint64(i), nil)
		first := get(t, l, "/")
		for range 5 {
			if s := get(t, l, "/"); s != first {
				t.Fatalf("lease %d moved from %s to %s", i, first, s)
			}
		}
		got = append(got, first)
		l.Close()
	}
	if want := []string{"b1", "b2", "b1", "b2"}; !equal(got, want) {
		t.Fatalf("backends %v, want %v", got, want)
	}
	if p.Backends()[0].Leases() != 0 {
		t.Fatalf("closed leases still counted")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackendClosingAnIdleConnectionIsReplaced(t *testing.T) {
	b := newBackend(t, nil)
	b.Config.SetKeepAlivesEnabled(true)
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	get(t, l, "/one")
	// The backend drops its idle connections (a keep-alive timeout, a
	// restart); the lease notices before using it and dials a replacement.
	b.CloseClientConnections()
	for a := range b.conns() {
		eventually(t, "backend close", func() bool { return b.isClosed(a) })
	}
	if got := get(t, l, "/two"); got != "ok GET /two" {
		t.Fatalf("after backend close: %q", got)
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "replace")); got != 1 {
		t.Fatalf("replacement conns = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), "backend_closed")); got != 1 {
		t.Fatalf("backend_closed = %v, want 1", got)
	}
	if l.Conns() != 1 {
		t.Fatalf("lease holds %d conns, want 1", l.Conns())
	}
}

// TestIdleConnectionIsProbedBeforeAPost: a POST is never replayed, so only
// the check before reuse keeps a connection the backend closed while idle
// from failing it. A connection idle for less than probeAfter is reused
// without the check (the pool's clock decides, moved by hand here).
func TestIdleConnectionIsProbedBeforeAPost(t *testing.T) {
	b := newBackend(t, nil)
	b.Config.SetKeepAlivesEnabled(true)
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	clock := newFakeClock()
	p.now = clock.Now
	l := p.Lease(1, nil)
	defer l.Close()
	get(t, l, "/one")
	b.CloseClientConnections()
	for a := range b.conns() {
		eventually(t, "backend close", func() bool { return b.isClosed(a) })
	}
	clock.Advance(probeAfter)
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/two", io.NopCloser(strings.NewReader("form")), 4))
	if err != nil {
		t.Fatalf("POST on a lease whose idle connection the backend closed: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok POST /two" {
		t.Fatalf("POST answered %q", body)
	}
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), "backend_closed")); got != 1 {
		t.Fatalf("backend_closed = %v, want 1", got)
	}
}

func TestConnectionCloseFromBackendIsHonoured(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	get(t, l, "/")
	get(t, l, "/")
	if c := b.conns(); len(c) != 2 {
		t.Fatalf("backend saw %d connections, want 2 (Connection: close)", len(c))
	}
}

// rawBackend accepts TCP connections and runs script on each, numbered from 1.
func rawBackend(t *testing.T, script func(n int, c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); script(n, c) })
		}
	})
	return ln.Addr().String()
}

// serveOne reads one request from br and answers it with a keep-alive 200.
func serveOne(c net.Conn, br *bufio.Reader, body string) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, req.Body)
	_, err = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	return err == nil
}

// TestReusedConnectionDyingBeforeResponseIsRetried: a backend that reads a
// request on a kept-alive connection and closes it without answering (the
// race of a keep-alive timeout) costs a replayable request nothing: it is
// sent again on a fresh connection. A POST is never replayed.
func TestReusedConnectionDyingBeforeResponseIsRetried(t *testing.T) {
	addr := rawBackend(t, func(n int, c net.Conn) {
		br := bufio.NewReader(c)
		if n == 1 || n == 3 {
			serveOne(c, br, "first")
			http.ReadRequest(br) // the second request on this connection dies unanswered
			return
		}
		for serveOne(c, br, "fresh") {
		}
	})
	p, m := newPool(t, Config{Backends: []string{addr}})
	l := p.Lease(1, nil)
	defer l.Close()
	if got := get(t, l, "/a"); got != "first" {
		t.Fatalf("first: %q", got)
	}
	if got := get(t, l, "/b"); got != "fresh" {
		t.Fatalf("retried GET: %q", got)
	}
	if got := testutil.ToFloat64(m.Retries.WithLabelValues(addr)); got != 1 {
		t.Fatalf("retries = %v, want 1", got)
	}

	l2 := p.Lease(2, nil) // gets connection 3, which dies on its second request
	defer l2.Close()
	if got := get(t, l2, "/a"); got != "first" {
		t.Fatalf("first on lease 2: %q", got)
	}
	req := newReq(t, context.Background(), http.MethodPost, "/pay", io.NopCloser(strings.NewReader("x=1")), 3)
	if _, err := l2.RoundTrip(req); err == nil {
		t.Fatal("POST on a dying connection succeeded; want an error and no replay")
	}
	if got := testutil.ToFloat64(m.Retries.WithLabelValues(addr)); got != 1 {
		t.Fatalf("retries after POST = %v, want still 1", got)
	}
}

func TestDeadBackendIsADialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p, m := newPool(t, Config{Backends: []string{addr}})
	l := p.Lease(1, nil)
	defer l.Close()
	_, err = l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
	de, ok := err.(*DialError)
	if !ok || de.Backend != addr || de.Timeout() {
		t.Fatalf("err = %#v, want a non-timeout *DialError for %s", err, addr)
	}
	if got := testutil.ToFloat64(m.DialErrors.WithLabelValues(addr)); got != 1 {
		t.Fatalf("dial errors = %v", got)
	}
	if l.Conns() != 0 {
		t.Fatal("a failed dial left a connection")
	}
}

func TestResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	defer close(release)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, ResponseHeaderTimeout: 50 * time.Millisecond})
	l := p.Lease(1, nil)
	defer l.Close()
	_, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
	if err == nil || !errors.Is(err, ErrResponseHeaderTimeout) {
		t.Fatalf("err = %v, want ErrResponseHeaderTimeout", err)
	}
}

// TestIdleConnectionHoldsNoBuffers: a connection between requests gives its
// read and write buffers back (an idle session costs less), and gets them
// again for the next request on the same connection.
func TestIdleConnectionHoldsNoBuffers(t *testing.T) {
	b := newBackend(t, nil)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	for i := range 3 {
		if got := get(t, l, "/"); got != "ok GET /" {
			t.Fatalf("request %d: %q", i, got)
		}
		l.mu.Lock()
		n, c := len(l.conns), l.conns[0]
		idle := !c.busy && c.br == nil && c.bw == nil
		l.mu.Unlock()
		if n != 1 || !idle {
			t.Fatalf("after request %d: %d conns, idle without buffers %v", i, n, idle)
		}
	}
}
