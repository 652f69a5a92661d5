package upstream

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestKeepaliveIdleClosesAnIdleConnection: a connection idle for
// KeepaliveIdle is closed (counted as "idle") and the next request dials a
// new one.
func TestKeepaliveIdleClosesAnIdleConnection(t *testing.T) {
	b := namedBackend(t, "b0")
	p, m := newPool(t, Config{Backends: []string{b.addr()}, KeepaliveIdle: 30 * time.Millisecond})
	l := p.Lease(0, nil)
	defer l.Close()
	_, first := hit(t, l)
	eventually(t, "the idle connection to close", func() bool {
		return l.Conns() == 0 && testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonIdle)) == 1
	})
	eventually(t, "the backend to see it close", func() bool { return b.isClosed(first) })
	if _, second := hit(t, l); second == first {
		t.Fatal("the next request used the closed connection")
	}
	if n := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "new")); n != 2 {
		t.Fatalf("new conns %v, want 2", n)
	}
}

// TestKeepaliveIdleSparesConnectionsInUse: a connection busy longer than
// KeepaliveIdle, or idle for less, stays open; the idle time counts from
// when it was last released. (The decision runs on the pool's clock, moved
// by hand here, so the test does not race the machine's load.)
func TestKeepaliveIdleSparesConnectionsInUse(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, r.RemoteAddr)
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}, KeepaliveIdle: time.Hour})
	clock := newFakeClock()
	p.now = clock.Now
	l := p.Lease(0, nil)
	defer l.Close()
	conn := get(t, l, "/")
	c := l.conns[0]

	clock.Advance(59 * time.Minute)
	l.expire(c) // idle 59 minutes: kept
	done := make(chan string)
	go func() { done <- get(t, l, "/slow") }()
	eventually(t, "the slow request to start", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return c.busy })
	clock.Advance(2 * time.Hour)
	l.expire(c) // busy for two hours: kept
	close(release)
	if got := <-done; got != conn {
		t.Fatalf("slow request on %s, want %s", got, conn)
	}
	clock.Advance(30 * time.Minute)
	l.expire(c) // idle 30 minutes since the slow request ended: kept
	if got := get(t, l, "/"); got != conn {
		t.Fatalf("request on %s, want %s", got, conn)
	}
	if n := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonIdle)); n != 0 {
		t.Fatalf("idle closes %v, want 0", n)
	}
	clock.Advance(time.Hour)
	l.expire(c) // idle an hour: closed
	if l.Conns() != 0 || testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonIdle)) != 1 {
		t.Fatalf("after an idle hour: %d conns, %v idle closes", l.Conns(), testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonIdle)))
	}
}
