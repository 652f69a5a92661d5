package upstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testArmDelay replaces abortArmDelay where a test waits past it.
const testArmDelay = 5 * time.Millisecond

// TestClientLeavingWhileTheBackendThinks: a client that goes away while its
// request waits for the backend's answer ends the round trip with its
// context's error and closes the upstream connection, so the backend sees
// the request abandoned — both before the watch on the client's context is
// armed and after.
func TestClientLeavingWhileTheBackendThinks(t *testing.T) {
	for _, after := range []time.Duration{testArmDelay / 5, 6 * testArmDelay} {
		t.Run(after.String(), func(t *testing.T) {
			abandoned := make(chan struct{})
			arrived := make(chan struct{})
			b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				select {
				case <-r.Context().Done(): // net/http: the connection closed
					close(abandoned)
				case <-time.After(10 * time.Second):
				}
			})
			p, m := newPool(t, Config{Backends: []string{b.addr()}})
			p.armDelay = testArmDelay
			l := p.Lease(1, nil)
			defer l.Close()
			ctx, cancel := context.WithCancel(context.Background())
			// after the request reached the backend: a cancel before
			// that would only stop the dial
			go func() { <-arrived; time.Sleep(after); cancel() }()
			start := time.Now()
			_, err := l.RoundTrip(newReq(t, ctx, http.MethodGet, "/slow", nil, 0))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("round trip ended %v after it began, long after the client left", d)
			}
			select {
			case <-abandoned:
			case <-time.After(5 * time.Second):
				t.Fatal("the backend never saw the request abandoned")
			}
			if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonAborted)); got != 1 {
				t.Fatalf("aborted closes = %v, want 1", got)
			}
		})
	}
}

// TestOnlyAnUnfinishedResponseIsWatched: a response that arrived whole in
// time leaves the client's context unwatched (no context.AfterFunc on the
// request path); a body still streaming, a slow answer and a request body
// are watched. The arming delay is a minute for the fast cases (so a slow
// test machine cannot make them slow) and a millisecond for the slow one
// (whose backend takes 50).
func TestOnlyAnUnfinishedResponseIsWatched(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			_, _ = io.WriteString(w, "first")
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
			_, _ = io.WriteString(w, "second")
		case "/slow":
			time.Sleep(50 * time.Millisecond)
			_, _ = io.WriteString(w, "late")
		default:
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "ok")
		}
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	for _, tc := range []struct {
		method, path string
		body         string
		armDelay     time.Duration
		watched      bool
	}{
		{"GET", "/", "", time.Minute, false},
		{"HEAD", "/", "", time.Minute, false},
		{"GET", "/stream", "", time.Minute, true},
		{"GET", "/slow", "", time.Millisecond, true},
		{"POST", "/", "payload", time.Minute, true},
		{"GET", "/", "", time.Minute, false}, // the same connection again
	} {
		p.armDelay = tc.armDelay
		var rb io.ReadCloser
		if tc.body != "" {
			rb = io.NopCloser(strings.NewReader(tc.body))
		}
		resp, err := l.RoundTrip(newReq(t, context.Background(), tc.method, tc.path, rb, int64(len(tc.body))))
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if got := resp.Body.(*body).w.armed(); got != tc.watched {
			t.Errorf("%s %s: watched = %v, want %v", tc.method, tc.path, got, tc.watched)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatalf("%s %s: body: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
	}
	if n := len(b.conns()); n != 1 {
		t.Fatalf("backend saw %d connections, want 1 (every response ended cleanly)", n)
	}
}

// TestSlowHeaderSegmentsAreWaitedFor: a response header arriving in pieces
// further apart than the arming delay, and a final response long after a
// 100 Continue, are read whole: the short unwatched wait is no timeout.
func TestSlowHeaderSegmentsAreWaitedFor(t *testing.T) {
	pause := 4 * testArmDelay
	for name, pieces := range map[string][]string{
		"split header": {"HTTP/1.1 200 OK\r\nContent-", "Length: 2\r\n\r\nok"},
		"100 continue": {"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	} {
		t.Run(name, func(t *testing.T) {
			addr := rawBackend(t, func(_ int, c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				for _, p := range pieces {
					if _, err := io.WriteString(c, p); err != nil {
						return
					}
					time.Sleep(pause)
				}
			})
			p, _ := newPool(t, Config{Backends: []string{addr}, ResponseHeaderTimeout: time.Minute})
			p.armDelay = testArmDelay
			l := p.Lease(1, nil)
			defer l.Close()
			if got := get(t, l, "/"); got != "ok" {
				t.Fatalf("body = %q, want ok", got)
			}
		})
	}
}

// TestShortResponseHeaderTimeout: a ResponseHeaderTimeout below the arming
// delay still bounds the wait.
func TestShortResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { <-release })
	defer close(release)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, ResponseHeaderTimeout: abortArmDelay / 50})
	l := p.Lease(1, nil)
	defer l.Close()
	_, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
	if !errors.Is(err, ErrResponseHeaderTimeout) {
		t.Fatalf("err = %v, want ErrResponseHeaderTimeout", err)
	}
}
