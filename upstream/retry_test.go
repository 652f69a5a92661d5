package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDialFailureRetriedOnNextHealthyBackend: nothing of a request whose
// dial failed was sent, so even a POST goes to the next backend, at once
// (TryInterval is for trying the same backend again), and the session moves
// with it.
func TestDialFailureRetriedOnNextHealthyBackend(t *testing.T) {
	dead := deadUpstreamAddr(t)
	b1 := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, "b1 got "+string(body))
	})
	p, m := newPool(t, Config{Backends: []string{dead, b1.addr()}, TryDuration: 5 * time.Second, TryInterval: time.Second})
	l := p.Lease(0, nil)
	defer l.Close()
	if l.Backend().Addr != dead {
		t.Fatal("round robin did not start with the dead backend")
	}
	start := time.Now()
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/pay", io.NopCloser(strings.NewReader("x=1")), 3))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "b1 got x=1" {
		t.Fatalf("body %q", body)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("took %v: moving to another backend should not wait TryInterval", d)
	}
	if n := testutil.ToFloat64(m.Retries.WithLabelValues(dead)); n != 1 {
		t.Fatalf("retries %v, want 1", n)
	}
	if n := movesFrom(m, dead); n != 1 {
		t.Fatalf("moves %v, want 1", n)
	}
	if l.Backend().Addr != b1.addr() {
		t.Fatalf("lease on %s after the move", l.Backend().Addr)
	}
}

// TestTryDurationZeroIsOneTryPerBackend: without a try duration a failed
// dial moves the session to the next healthy backend at once (one try per
// backend, no waiting); with no other backend the request fails after one
// attempt.
func TestTryDurationZeroIsOneTryPerBackend(t *testing.T) {
	dead := deadUpstreamAddr(t)
	b1 := namedBackend(t, "b1")
	p, m := newPool(t, Config{Backends: []string{dead, b1.addr()}})
	l := p.Lease(0, nil)
	defer l.Close()
	if name, _ := hit(t, l); name != "b1" {
		t.Fatalf("request went to %s, want b1 after the dead backend", name)
	}
	if n := testutil.ToFloat64(m.DialErrors.WithLabelValues(dead)); n != 1 {
		t.Fatalf("dial errors %v, want 1", n)
	}
	if n := movesFrom(m, dead); n != 1 {
		t.Fatalf("moves %v, want 1", n)
	}

	alone, am := newPool(t, Config{Backends: []string{dead}})
	l2 := alone.Lease(0, nil)
	defer l2.Close()
	var de *DialError
	if _, err := tryGet(t, context.Background(), l2, "/"); !errors.As(err, &de) || de.Backend != dead {
		t.Fatalf("err %v, want a DialError for %s", err, dead)
	}
	if n := testutil.ToFloat64(am.Retries.WithLabelValues(dead)); n != 0 {
		t.Fatalf("a lone dead backend was retried %v times", n)
	}
}

// TestRetriesTheSessionsBackendUntilItListens: with nowhere else to go, a
// request whose dial failed tries the same backend again every TryInterval
// and gets through once the backend is back.
func TestRetriesTheSessionsBackendUntilItListens(t *testing.T) {
	addr := deadUpstreamAddr(t)
	p, m := newPool(t, Config{Backends: []string{addr}, TryDuration: 10 * time.Second, TryInterval: 10 * time.Millisecond})
	l := p.Lease(0, nil)
	defer l.Close()
	done := make(chan string, 1)
	go func() {
		body, err := tryGet(t, context.Background(), l, "/")
		if err != nil {
			body = err.Error()
		}
		done <- body
	}()
	eventually(t, "a few failed dials", func() bool { return testutil.ToFloat64(m.DialErrors.WithLabelValues(addr)) >= 3 })

	ln, err := net.Listen("tcp", addr) // the backend comes back
	if err != nil {
		l.Close() // ends the retrying request
		<-done
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "back") }))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	if body := <-done; body != "back" {
		t.Fatalf("got %q", body)
	}
	if n := movesFrom(m, addr); n != 0 {
		t.Fatalf("moves %v with a single backend", n)
	}
}

// TestWrittenRequestIsNeverReplayed: a POST whose connection died after the
// request was written (no response byte) is not sent again, whatever the
// try duration: the backend may have acted on it.
func TestWrittenRequestIsNeverReplayed(t *testing.T) {
	var posts atomic.Int32
	addr := rawBackend(t, func(n int, c net.Conn) {
		br := bufio.NewReader(c)
		if n > 1 {
			for serveOne(c, br, "fresh") {
			}
			return
		}
		serveOne(c, br, "first")
		req, err := http.ReadRequest(br)
		if err == nil && req.Method == http.MethodPost {
			io.Copy(io.Discard, req.Body)
			posts.Add(1)
		}
		// and the connection dies unanswered
	})
	p, m := newPool(t, Config{Backends: []string{addr}, TryDuration: 5 * time.Second, TryInterval: 10 * time.Millisecond})
	l := p.Lease(0, nil)
	defer l.Close()
	get(t, l, "/")
	req := newReq(t, context.Background(), http.MethodPost, "/pay", io.NopCloser(strings.NewReader("x=1")), 3)
	if _, err := l.RoundTrip(req); err == nil {
		t.Fatal("POST on a dying connection succeeded")
	}
	if n := posts.Load(); n != 1 {
		t.Fatalf("backend got the POST %d times, want once", n)
	}
	if n := testutil.ToFloat64(m.Retries.WithLabelValues(addr)); n != 0 {
		t.Fatalf("retries %v, want 0", n)
	}
}

func TestContextCancellationStopsRetrying(t *testing.T) {
	dead := deadUpstreamAddr(t)
	p, _ := newPool(t, Config{Backends: []string{dead}, TryDuration: time.Minute, TryInterval: 10 * time.Millisecond})
	l := p.Lease(0, nil)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := tryGet(t, ctx, l, "/"); err != context.DeadlineExceeded {
		t.Fatalf("err %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("retried for %v after the context ended", d)
	}
}

// TestTryDurationBoundsRetries: a backend that stays down gets tries
// TryInterval apart until TryDuration is over; the last dial error is the
// answer.
func TestTryDurationBoundsRetries(t *testing.T) {
	dead := deadUpstreamAddr(t)
	p, m := newPool(t, Config{Backends: []string{dead}, TryDuration: 150 * time.Millisecond, TryInterval: 20 * time.Millisecond})
	l := p.Lease(0, nil)
	defer l.Close()
	start := time.Now()
	var de *DialError
	if _, err := tryGet(t, context.Background(), l, "/"); !errors.As(err, &de) {
		t.Fatalf("err %v, want a DialError", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Fatalf("gave up after %v, want about 150ms", d)
	}
	// At least one retry; at most one per interval (plus the first).
	if n := testutil.ToFloat64(m.DialErrors.WithLabelValues(dead)); n < 2 || n > 9 {
		t.Fatalf("%v dials in 150ms at 20ms intervals", n)
	}
}
