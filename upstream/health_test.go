package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// healthBackend answers /health with the status in *status and everything
// else with its name, and records the health checks' connections.
type healthBackend struct {
	*backend
	status atomic.Int32
	mu     sync.Mutex
	checks []*http.Request
}

func newHealthBackend(t *testing.T, name string) *healthBackend {
	t.Helper()
	hb := &healthBackend{}
	hb.status.Store(http.StatusOK)
	hb.backend = newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			hb.mu.Lock()
			hb.checks = append(hb.checks, r)
			hb.mu.Unlock()
			w.WriteHeader(int(hb.status.Load()))
			return
		}
		io.WriteString(w, name+" "+r.RemoteAddr)
	})
	return hb
}

func (hb *healthBackend) checkCount() int {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return len(hb.checks)
}

// TestActiveHealthCheck: a backend answering 500 on the health URI becomes
// unhealthy at the next check (logged, exported), new sessions avoid it,
// and it recovers when it answers 200 again.
func TestActiveHealthCheck(t *testing.T) {
	b0, b1 := newHealthBackend(t, "b0"), newHealthBackend(t, "b1")
	p, m, logs := newObservedPool(t, Config{Backends: addrsOf(b0.backend, b1.backend), Health: ActiveHealth{URI: "/health"}})
	ctx := context.Background()

	l := p.Lease(1, nil) // on b0
	defer l.Close()
	_, conn := hit(t, l)

	p.checkOnce(ctx)
	if !p.Backends()[0].Healthy() || !p.Backends()[1].Healthy() {
		t.Fatal("healthy backends judged unhealthy")
	}
	b0.status.Store(http.StatusInternalServerError)
	p.checkOnce(ctx)
	if p.Backends()[0].Healthy() {
		t.Fatal("b0 answered 500 and is still healthy")
	}
	if g := testutil.ToFloat64(m.Healthy.WithLabelValues(b0.addr())); g != 0 {
		t.Fatalf("healthy gauge %v, want 0", g)
	}
	if n := testutil.ToFloat64(m.HealthCheckFailures.WithLabelValues(b0.addr())); n != 1 {
		t.Fatalf("health check failures %v, want 1", n)
	}
	if e := logged(logs, "backend unhealthy"); len(e) != 1 || field(e[0], "backend") != b0.addr() || field(e[0], "reason") == "" {
		t.Fatalf("unhealthy log: %v", e)
	}
	for i := range 4 {
		nl := p.Lease(uint64(10+i), nil)
		if name, _ := hit(t, nl); name != "b1" {
			t.Fatalf("new session %d went to %s while b0 is unhealthy", i, name)
		}
		nl.Close()
	}

	b0.status.Store(http.StatusOK)
	p.checkOnce(ctx)
	if !p.Backends()[0].Healthy() {
		t.Fatal("b0 did not recover")
	}
	if g := testutil.ToFloat64(m.Healthy.WithLabelValues(b0.addr())); g != 1 {
		t.Fatalf("healthy gauge %v, want 1", g)
	}
	if e := logged(logs, "backend healthy"); len(e) != 1 || field(e[0], "backend") != b0.addr() {
		t.Fatalf("healthy log: %v", e)
	}

	// The checks used connections of their own, one per check, never the
	// session's.
	b0.mu.Lock()
	for _, r := range b0.checks {
		if r.RemoteAddr == conn {
			t.Fatalf("a health check used the session's connection %s", conn)
		}
		if !r.Close {
			t.Fatal("a health check kept its connection open")
		}
	}
	b0.mu.Unlock()
	if c := b0.conns(); c[conn] != 1 || len(c) != 4 {
		t.Fatalf("backend connections %v: want the session's and one per check", c)
	}
}

func TestActiveHealthUnreachableBackend(t *testing.T) {
	dead := deadUpstreamAddr(t)
	p, m := newPool(t, Config{Backends: []string{dead}, Health: ActiveHealth{URI: "/health", Timeout: time.Second}})
	p.checkOnce(context.Background())
	if p.Backends()[0].Healthy() {
		t.Fatal("a backend that refuses connections is healthy")
	}
	if n := testutil.ToFloat64(m.HealthCheckFailures.WithLabelValues(dead)); n != 1 {
		t.Fatalf("failures %v", n)
	}
}

// TestActiveHealthTimeout: a backend that does not answer within the
// timeout fails its check.
func TestActiveHealthTimeout(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	defer close(release)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, Health: ActiveHealth{URI: "/health", Timeout: 50 * time.Millisecond}})
	start := time.Now()
	p.checkOnce(context.Background())
	if p.Backends()[0].Healthy() {
		t.Fatal("a backend that never answers is healthy")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("check took %v, want about the 50ms timeout", d)
	}
}

func TestActiveHealthStatus(t *testing.T) {
	for _, tc := range []struct {
		h    ActiveHealth
		code int
		want bool
	}{
		{ActiveHealth{}, 200, true},
		{ActiveHealth{}, 204, true},
		{ActiveHealth{}, 301, false},
		{ActiveHealth{}, 500, false},
		{ActiveHealth{Status: 204}, 204, true},
		{ActiveHealth{Status: 204}, 200, false},
		{ActiveHealth{Status: 300, StatusClass: true}, 302, true},
		{ActiveHealth{Status: 300, StatusClass: true}, 200, false},
		{ActiveHealth{Status: 418}, 418, true},
	} {
		if got := tc.h.wants(tc.code); got != tc.want {
			t.Errorf("Status %d class %v, answer %d: healthy %v, want %v", tc.h.Status, tc.h.StatusClass, tc.code, got, tc.want)
		}
	}
}

// TestStartRunsTheCheckerUntilClose: Start checks at once and then every
// interval; Close stops the checker (goleak would see it otherwise).
func TestStartRunsTheCheckerUntilClose(t *testing.T) {
	b := newHealthBackend(t, "b0")
	b.status.Store(http.StatusServiceUnavailable)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, Health: ActiveHealth{URI: "/health", Interval: 10 * time.Millisecond}})
	p.Start(context.Background())
	p.Start(context.Background()) // no second checker
	eventually(t, "the checker to mark the backend unhealthy", func() bool { return !p.Backends()[0].Healthy() })
	b.status.Store(http.StatusOK)
	eventually(t, "the checker to mark the backend healthy", func() bool { return p.Backends()[0].Healthy() })
	eventually(t, "several checks", func() bool { return b.checkCount() >= 4 })
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	p.Close()
	select {
	case <-done: // Close waited for the checker to exit
	default:
		t.Fatal("the checker still runs after Close")
	}
	n := b.checkCount()
	p.Close()
	p.Start(context.Background()) // after Close: nothing
	if b.checkCount() != n {
		t.Fatal("Start after Close checked")
	}
}

// TestStartStopsWithItsContext: the checker also ends with Start's context.
func TestStartStopsWithItsContext(t *testing.T) {
	b := newHealthBackend(t, "b0")
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, Health: ActiveHealth{URI: "/health", Interval: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	p.Start(ctx)
	eventually(t, "the first check", func() bool { return b.checkCount() == 1 })
	cancel()
	select {
	case <-p.done:
	case <-time.After(time.Second):
		t.Fatal("checker still running a second after its context ended")
	}
}

// TestPassiveFailuresAgeOut: MaxFails responses with an unhealthy status
// within FailDuration make the backend unhealthy, so the session's next
// request fails with ErrNoHealthyBackend (it has nowhere to go); when the
// oldest failure ages out, the backend is healthy again.
func TestPassiveFailuresAgeOut(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	p, m, logs := newObservedPool(t, Config{Backends: []string{b.addr()}, Passive: PassiveHealth{
		FailDuration: time.Minute, MaxFails: 3,
		UnhealthyStatus: []StatusMatch{{Code: 500, Class: true}},
	}})
	clock := newFakeClock()
	p.now = clock.Now
	be := p.Backends()[0]
	l := p.Lease(1, nil)
	defer l.Close()

	for i := range 3 {
		if _, err := tryGet(t, context.Background(), l, "/"); err != nil {
			t.Fatalf("request %d: %v (a 503 is a response, not an error)", i, err)
		}
		if i < 2 && !be.Healthy() {
			t.Fatalf("unhealthy after %d failures, want 3", i+1)
		}
		clock.Advance(10 * time.Second)
	}
	if be.Healthy() {
		t.Fatal("healthy after 3 failures within a minute")
	}
	if n := testutil.ToFloat64(m.PassiveFailures.WithLabelValues(b.addr(), failStatus)); n != 3 {
		t.Fatalf("passive failures %v, want 3", n)
	}
	if e := logged(logs, "backend unhealthy"); len(e) != 1 || field(e[0], "reason") != "status 503" {
		t.Fatalf("unhealthy log %v", e)
	}
	if _, err := tryGet(t, context.Background(), l, "/"); !errors.Is(err, ErrNoHealthyBackend) {
		t.Fatalf("request to an unhealthy lone backend: %v, want ErrNoHealthyBackend", err)
	}

	clock.Advance(29 * time.Second) // the first failure is 59s old
	if be.Healthy() {
		t.Fatal("healthy before the first failure aged out")
	}
	clock.Advance(time.Second)
	if !be.Healthy() {
		t.Fatal("still unhealthy after the first failure aged out")
	}
	if e := logged(logs, "backend healthy"); len(e) != 1 {
		t.Fatalf("healthy log %v", e)
	}
	if g := testutil.ToFloat64(m.Healthy.WithLabelValues(b.addr())); g != 1 {
		t.Fatalf("gauge %v", g)
	}
	if _, err := tryGet(t, context.Background(), l, "/"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	// Two failures are still within the minute: one more is the third.
	if be.Healthy() {
		t.Fatal("healthy with 3 failures within a minute")
	}
}

// TestPassiveRecoveryNeedsNoRequest: with a real clock, the recovery is
// logged and exported when the failures age out, without a request asking.
func TestPassiveRecoveryNeedsNoRequest(t *testing.T) {
	dead := deadUpstreamAddr(t)
	p, m, logs := newObservedPool(t, Config{Backends: []string{dead}, Passive: PassiveHealth{FailDuration: 50 * time.Millisecond}})
	l := p.Lease(1, nil)
	defer l.Close()
	var de *DialError
	if _, err := tryGet(t, context.Background(), l, "/"); !errors.As(err, &de) {
		t.Fatalf("err %v, want a DialError", err)
	}
	if n := testutil.ToFloat64(m.PassiveFailures.WithLabelValues(dead, failDial)); n != 1 {
		t.Fatalf("dial failures %v", n)
	}
	eventually(t, "the recovery log", func() bool { return len(logged(logs, "backend healthy")) == 1 })
	if g := testutil.ToFloat64(m.Healthy.WithLabelValues(dead)); g != 1 {
		t.Fatalf("gauge %v", g)
	}
}

// TestPassiveResponseHeaderTimeout: a backend that times out counts a
// failure.
func TestPassiveResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	defer close(release)
	p, m := newPool(t, Config{Backends: []string{b.addr()}, ResponseHeaderTimeout: 20 * time.Millisecond,
		Passive: PassiveHealth{FailDuration: time.Minute}})
	p.now = newFakeClock().Now
	l := p.Lease(1, nil)
	defer l.Close()
	if _, err := tryGet(t, context.Background(), l, "/"); !errors.Is(err, ErrResponseHeaderTimeout) {
		t.Fatalf("err %v", err)
	}
	if p.Backends()[0].Healthy() {
		t.Fatal("healthy after a response header timeout with MaxFails 1")
	}
	if n := testutil.ToFloat64(m.PassiveFailures.WithLabelValues(b.addr(), failHeaderTimeout)); n != 1 {
		t.Fatalf("failures %v", n)
	}
}

// TestPassiveBrokenExchange: a backend that resets a fresh connection, or
// answers with a head that is not HTTP, counts a failure ("broken"); a
// reused connection found reset is not one (the request goes again, and
// only its failure on a fresh connection counts), nor is a client that
// went away.
func TestPassiveBrokenExchange(t *testing.T) {
	var mode atomic.Int32
	const (
		answer = iota
		reset
		garbage
		slow
	)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case reset, garbage:
			nc, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			if mode.Load() == garbage {
				io.WriteString(nc, "SMTP ready\r\n\r\n")
			} else {
				nc.(*net.TCPConn).SetLinger(0)
			}
			nc.Close()
		case slow:
			<-r.Context().Done()
		default:
			io.WriteString(w, "ok")
		}
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}, Passive: PassiveHealth{FailDuration: time.Minute, MaxFails: 10}})
	p.now = newFakeClock().Now
	l := p.Lease(1, nil)
	defer l.Close()
	broken := func() float64 { return testutil.ToFloat64(m.PassiveFailures.WithLabelValues(b.addr(), failBroken)) }
	step := func(name string, mo int32, ctx context.Context, wantErr bool, want float64) {
		t.Helper()
		mode.Store(mo)
		if _, err := tryGet(t, ctx, l, "/"); (err != nil) != wantErr {
			t.Fatalf("%s: err %v", name, err)
		}
		if got := broken(); got != want {
			t.Fatalf("%s: %v broken exchanges counted, want %v", name, got, want)
		}
	}
	step("answered", answer, context.Background(), false, 0)
	step("reset, reused then fresh", reset, context.Background(), true, 1)
	step("not HTTP", garbage, context.Background(), true, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	step("client gone", slow, ctx, true, 2)
	step("answered again", answer, context.Background(), false, 2)
	if n := testutil.ToFloat64(m.Retries.WithLabelValues(b.addr())); n != 1 {
		t.Fatalf("%v retries, want 1 (the reused connection found reset)", n)
	}
}

// TestNoHealthChecksMeansAlwaysHealthy: without health checks, failures
// change nothing: a dead backend is reported by its dial error, never as
// "no healthy backend".
func TestNoHealthChecksMeansAlwaysHealthy(t *testing.T) {
	dead := deadUpstreamAddr(t)
	p, _ := newPool(t, Config{Backends: []string{dead}})
	l := p.Lease(1, nil)
	defer l.Close()
	for range 3 {
		var de *DialError
		if _, err := tryGet(t, context.Background(), l, "/"); !errors.As(err, &de) {
			t.Fatalf("err %v, want a DialError", err)
		}
	}
	if !p.Backends()[0].Healthy() {
		t.Fatal("unhealthy without health checks")
	}
}
