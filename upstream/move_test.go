package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestKillingABackendMovesOnlyItsSessions: with sessions on two backends,
// one backend dies (listener and connections closed). The sessions that
// were on it move to the other, where their next request succeeds, and the
// move is logged and counted; the sessions on the healthy backend keep
// their connections.
func TestKillingABackendMovesOnlyItsSessions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		passive bool
		reasons []string // of the two moves
	}{
		// The first session's failed dial makes b0 unhealthy (MaxFails 1),
		// and the second moves before touching it.
		{name: "passive health", passive: true, reasons: []string{moveUnhealthy, moveUnhealthy}},
		// No health checks: each session finds b0 unreachable itself.
		{name: "no health checks", reasons: []string{moveUnreachable, moveUnreachable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b0, b1 := namedBackend(t, "b0"), namedBackend(t, "b1")
			cfg := Config{Backends: addrsOf(b0, b1), TryDuration: 5 * time.Second, TryInterval: 10 * time.Millisecond}
			if tc.passive {
				cfg.Passive = PassiveHealth{FailDuration: time.Minute}
			}
			p, m, logs := newObservedPool(t, cfg)
			p.now = newFakeClock().Now
			var leases []*Lease
			var before []string // connection of each lease
			for i := range 4 {
				l := p.Lease(uint64(i), nil)
				defer l.Close()
				name, conn := hit(t, l)
				if want := []string{"b0", "b1"}[i%2]; name != want {
					t.Fatalf("lease %d on %s, want %s", i, name, want)
				}
				leases = append(leases, l)
				before = append(before, conn)
			}

			b0.Close()

			for i, l := range leases {
				name, conn := hit(t, l)
				if name != "b1" {
					t.Fatalf("lease %d: next request answered by %s, want b1", i, name)
				}
				if i%2 == 1 && conn != before[i] {
					t.Fatalf("lease %d on the healthy backend changed connection %s → %s", i, before[i], conn)
				}
				if l.Backend().Addr != b1.addr() {
					t.Fatalf("lease %d: Backend() = %s", i, l.Backend().Addr)
				}
			}
			for i := 1; i < 4; i += 2 {
				if b1.isClosed(before[i]) {
					t.Fatalf("lease %d's connection to the healthy backend was closed", i)
				}
			}
			if n := movesFrom(m, b0.addr()); n != 2 {
				t.Fatalf("session moves from b0 = %v, want 2", n)
			}
			if n := movesFrom(m, b1.addr()); n != 0 {
				t.Fatalf("session moves from b1 = %v, want 0", n)
			}
			moves := logged(logs, "session moved")
			if len(moves) != 2 {
				t.Fatalf("%d move logs, want 2", len(moves))
			}
			for i, e := range moves {
				cm := e.ContextMap()
				if cm["session"] != uint64(i*2) || cm["from"] != b0.addr() || cm["to"] != b1.addr() || cm["reason"] != tc.reasons[i] {
					t.Fatalf("move log %d: %v, want session %d from b0 to b1 (%s)", i, cm, i*2, tc.reasons[i])
				}
			}
			if b0l, b1l := p.Backends()[0].Leases(), p.Backends()[1].Leases(); b0l != 0 || b1l != 4 {
				t.Fatalf("leases b0 %d b1 %d, want 0 and 4", b0l, b1l)
			}
		})
	}
}

// TestUnhealthyBackendMovesItsSessionAndNeverBack: an active check fails
// b0; its session moves at its next request (the old connection closed as
// "moved"), and stays on b1 when b0 recovers. A session on a healthy
// backend never moves.
func TestUnhealthyBackendMovesItsSessionAndNeverBack(t *testing.T) {
	b0, b1 := newHealthBackend(t, "b0"), newHealthBackend(t, "b1")
	p, m, logs := newObservedPool(t, Config{Backends: addrsOf(b0.backend, b1.backend), Health: ActiveHealth{URI: "/health"}})
	l0, l1 := p.Lease(0, nil), p.Lease(1, nil)
	defer l0.Close()
	defer l1.Close()
	_, c0 := hit(t, l0)
	_, c1 := hit(t, l1)

	b0.status.Store(http.StatusInternalServerError)
	p.checkOnce(context.Background())
	if name, _ := hit(t, l0); name != "b1" {
		t.Fatalf("after b0 turned unhealthy, answered by %s", name)
	}
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b0.addr(), reasonMoved)); n != 1 {
		t.Fatalf("moved closes %v, want 1", n)
	}
	eventually(t, "b0 to see the session's connection close", func() bool { return b0.isClosed(c0) })
	if e := logged(logs, "session moved"); len(e) != 1 || field(e[0], "reason") != moveUnhealthy {
		t.Fatalf("move log %v", e)
	}

	b0.status.Store(http.StatusOK)
	p.checkOnce(context.Background())
	for range 3 {
		if name, _ := hit(t, l0); name != "b1" {
			t.Fatalf("the moved session went back to %s", name)
		}
		if name, conn := hit(t, l1); name != "b1" || conn != c1 {
			t.Fatalf("the session on b1 moved: %s %s, was %s", name, conn, c1)
		}
	}
	if n := movesFrom(m, b0.addr()); n != 1 {
		t.Fatalf("moves %v, want 1", n)
	}
}

// TestMoveLetsAResponseInFlightFinish: a session moves while a response
// from its old backend is still streaming; the response ends normally and
// its connection is then closed, not kept.
func TestMoveLetsAResponseInFlightFinish(t *testing.T) {
	release := make(chan struct{})
	b0 := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part1 ")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "part2")
	})
	b1 := namedBackend(t, "b1")
	p, m := newPool(t, Config{Backends: addrsOf(b0, b1), Passive: PassiveHealth{FailDuration: time.Minute}})
	p.now = newFakeClock().Now
	l := p.Lease(0, nil)
	defer l.Close()
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodGet, "/stream", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "part1 " {
		t.Fatalf("first part %q %v", buf, err)
	}

	p.Backends()[0].fail(failDial, "test")
	if name, _ := hit(t, l); name != "b1" {
		t.Fatalf("request during the stream went to %s", name)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "part2" {
		t.Fatalf("rest of the stream %q %v", rest, err)
	}
	resp.Body.Close()
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b0.addr(), reasonMoved)); n != 1 {
		t.Fatalf("moved closes %v, want 1", n)
	}
	if l.Conns() != 1 {
		t.Fatalf("lease holds %d connections, want only b1's", l.Conns())
	}
}

// TestConcurrentRequestsMoveTheSessionOnce: requests of one session that
// all find its backend unhealthy move it once.
func TestConcurrentRequestsMoveTheSessionOnce(t *testing.T) {
	b0, b1 := namedBackend(t, "b0"), namedBackend(t, "b1")
	p, m := newPool(t, Config{Backends: addrsOf(b0, b1), Passive: PassiveHealth{FailDuration: time.Minute}})
	p.now = newFakeClock().Now
	l := p.Lease(0, nil)
	defer l.Close()
	hit(t, l)
	p.Backends()[0].fail(failDial, "test")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if body, err := tryGet(t, context.Background(), l, "/"); err != nil || !strings.HasPrefix(body, "b1 ") {
				t.Errorf("got %q %v, want b1", body, err)
			}
		})
	}
	wg.Wait()
	if n := movesFrom(m, b0.addr()); n != 1 {
		t.Fatalf("moves %v, want 1", n)
	}
	if b0l, b1l := p.Backends()[0].Leases(), p.Backends()[1].Leases(); b0l != 0 || b1l != 1 {
		t.Fatalf("leases %d %d", b0l, b1l)
	}
}

// closeTracker is a request body that records being closed.
type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func TestNoHealthyBackend(t *testing.T) {
	b0, b1 := newHealthBackend(t, "b0"), newHealthBackend(t, "b1")
	b0.status.Store(http.StatusServiceUnavailable)
	b1.status.Store(http.StatusServiceUnavailable)
	p, _ := newPool(t, Config{Backends: addrsOf(b0.backend, b1.backend), Health: ActiveHealth{URI: "/health"},
		TryDuration: 100 * time.Millisecond, TryInterval: 20 * time.Millisecond})
	p.checkOnce(context.Background())
	l := p.Lease(0, nil)
	defer l.Close()
	if l.Backend() == nil {
		t.Fatal("a lease without a backend")
	}
	body := &closeTracker{Reader: strings.NewReader("x")}
	start := time.Now()
	_, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/", body, 1))
	if !errors.Is(err, ErrNoHealthyBackend) {
		t.Fatalf("err %v, want ErrNoHealthyBackend", err)
	}
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Fatalf("gave up after %v, want to wait out the 100ms try duration", d)
	}
	if !body.closed {
		t.Fatal("request body not closed")
	}
	if len(b0.conns())+len(b1.conns()) != 2 {
		t.Fatal("a request reached an unhealthy backend")
	}

	// A backend recovering within the try duration takes the request.
	p2, _ := newPool(t, Config{Backends: addrsOf(b0.backend), Health: ActiveHealth{URI: "/health"},
		TryDuration: 10 * time.Second, TryInterval: 5 * time.Millisecond})
	p2.checkOnce(context.Background())
	l2 := p2.Lease(0, nil)
	defer l2.Close()
	done := make(chan error, 1)
	go func() { _, err := tryGet(t, context.Background(), l2, "/"); done <- err }()
	b0.status.Store(http.StatusOK)
	p2.checkOnce(context.Background())
	if err := <-done; err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}
