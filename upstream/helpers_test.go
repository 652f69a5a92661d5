package upstream

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is the clock of passive health failures in tests that would
// otherwise wait out a fail duration.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// deadUpstreamAddr returns a loopback address nothing listens on: dialling
// it is refused at once.
func deadUpstreamAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// namedBackend answers every request with "NAME REMOTEADDR", so a test sees
// which backend and which of the proxy's connections carried it.
func namedBackend(t *testing.T, name string) *backend {
	t.Helper()
	return newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name+" "+r.RemoteAddr)
	})
}

// hit sends a GET on l and returns the answering backend's name and the
// connection's address as the backend saw it (see namedBackend).
func hit(t *testing.T, l *Lease) (name, conn string) {
	t.Helper()
	name, conn, _ = strings.Cut(get(t, l, "/"), " ")
	return name, conn
}

// tryGet is get that returns the error instead of failing the test.
func tryGet(t *testing.T, ctx context.Context, l *Lease, path string) (string, error) {
	t.Helper()
	resp, err := l.RoundTrip(newReq(t, ctx, http.MethodGet, path, nil, 0))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// logged returns the entries with message msg.
func logged(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	return logs.FilterMessage(msg).All()
}

// field returns an entry's string field.
func field(e observer.LoggedEntry, key string) string {
	v, _ := e.ContextMap()[key].(string)
	return v
}

// addrsOf returns the addresses of backends.
func addrsOf(bs ...*backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.addr())
	}
	return out
}

// movesFrom sums the session moves off the backend at from, whatever their
// reason.
func movesFrom(m *Metrics, from string) float64 {
	n := 0.0
	for _, reason := range []string{moveUnhealthy, moveUnreachable, moveReload} {
		n += testutil.ToFloat64(m.SessionMoves.WithLabelValues(from, reason))
	}
	return n
}
