package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// openFDs is how many file descriptors the test process holds.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// fetch sends a GET on c and reads the answer whole: the status, the body
// and the error reading it (a response cut short shows as one).
func fetch(t *testing.T, c interface {
	RoundTrip(*http.Request) (*http.Response, error)
}, url string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// resetConn closes c with a TCP RST instead of a FIN.
func resetConn(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// TestBackendFaults (issue 12): for each way a backend fails a request, the
// client gets the documented answer, the error log a line naming the
// backend and the reason, the connection that failed is closed, never used
// again, and the same session's next request is answered over a fresh
// connection to the same backend. Nothing leaks: the package's goleak
// check, and the process's descriptors counted before and after.
func TestBackendFaults(t *testing.T) {
	ok := func(c net.Conn) bool {
		_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return err == nil
	}
	cases := []struct {
		name string
		// after this many requests answered well on a connection, the
		// backend fails the next one as fault says (false: close).
		after int
		fault func(c net.Conn) bool
		// what the client gets: a status, or cut for a 200 whose body is
		// cut short (a reset stream, which may overtake the head: never a
		// complete-looking response).
		status int
		cut    bool
		log    string // the error log's message, "" for none
		reason string // in the log line's error
		conns  int    // connections the backend accepted in all: 2, a fresh one after the fault
	}{
		{name: "killed mid-response", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n"+strings.Repeat("x", 3000))
			return false
		}, status: 200, cut: true, log: "upstream response body failed", reason: "unexpected EOF", conns: 2},
		{name: "reset mid-response", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n"+strings.Repeat("x", 3000))
			time.Sleep(50 * time.Millisecond) // the head and body reach the proxy first
			resetConn(c)
			return false
		}, status: 200, cut: true, log: "upstream response body failed", reason: "connection reset", conns: 2},
		{name: "reset before answering", fault: func(c net.Conn) bool {
			resetConn(c)
			return false
		}, status: 502, log: "upstream request failed", reason: "connection reset", conns: 2},
		{name: "closed before answering", fault: func(c net.Conn) bool { return false },
			status: 502, log: "upstream request failed", reason: "EOF", conns: 2},
		{name: "accepts, never answers", fault: func(c net.Conn) bool {
			io.Copy(io.Discard, c) // until the proxy gives up and closes
			return false
		}, status: 504, log: "upstream request failed", reason: "timeout awaiting response header", conns: 2},
		{name: "malformed status line", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok")
			return true // the proxy must not read on from here
		}, status: 502, log: "upstream request failed", reason: "malformed", conns: 2},
		{name: "malformed header", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header: x\r\n\r\nok")
			return true
		}, status: 502, log: "upstream request failed", reason: "malformed", conns: 2},
		{name: "NUL in a header value", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok")
			return true
		}, status: 502, log: "upstream request failed", reason: "malformed", conns: 2},
		// The chunked framing held: the response is cut for the client,
		// the connection is kept.
		{name: "malformed trailer", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nBad Trailer: x\r\n\r\n")
			return true
		}, status: 200, cut: true, log: "upstream response body failed", reason: "malformed response: invalid trailer field name", conns: 1},
		{name: "two lengths", fault: func(c net.Conn) bool {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk")
			return true
		}, status: 502, log: "upstream request failed", reason: "Content-Length", conns: 2},
		// A connection that served a request, then dies before answering
		// the next: the request was replayable (a GET), so it is sent
		// again, once, on a fresh connection, and the client sees only
		// the answer.
		{name: "reused connection reset before answering", after: 1, fault: func(c net.Conn) bool {
			resetConn(c)
			return false
		}, status: 200, conns: 2},
	}
	fds := openFDs(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var first atomic.Bool
			first.Store(true)
			var served atomic.Int32
			be := startRawBackend(t, func(c net.Conn, req *http.Request) bool {
				if served.Add(1) == int32(tc.after)+1 {
					return tc.fault(c)
				}
				return ok(c)
			})
			h := startProxy(t, siteFor(" {\n\t\tresponse_header_timeout 300ms\n\t}", be.Addr()), nil)
			c := h.dial(t)
			url := "https://localhost:" + strconv.Itoa(h.port) + "/"
			for range tc.after {
				if status, body, err := fetch(t, c, url); status != 200 || body != "ok" || err != nil {
					t.Fatalf("warm-up: %d %q %v", status, body, err)
				}
			}

			status, body, err := fetch(t, c, url)
			switch {
			case tc.cut && status == 0 && err != nil:
				// The reset overtook the head: the client saw nothing.
			case status != tc.status:
				t.Fatalf("status %d (%v), want %d", status, err, tc.status)
			case tc.cut && err == nil:
				t.Fatalf("a cut response read whole: %d bytes", len(body))
			case !tc.cut && err != nil:
				t.Fatalf("reading the %d: %v", status, err)
			case tc.status == 200 && !tc.cut && body != "ok":
				t.Fatalf("body %q", body)
			}
			if tc.log != "" {
				eventually(t, "the error log line", func() bool { return len(h.logged(tc.log)) == 1 })
				f := h.logged(tc.log)[0].ContextMap()
				if f["backend"] != be.Addr() || !strings.Contains(fmt.Sprint(f["error"]), tc.reason) {
					t.Fatalf("log line %v, want backend %s and %q in the error", f, be.Addr(), tc.reason)
				}
			}
			if n := len(h.logged("upstream request failed")) + len(h.logged("upstream response body failed")); tc.log == "" && n != 0 {
				t.Fatalf("%d failure log lines for a request that was answered", n)
			}

			// The same session goes on, over a fresh connection to the
			// same backend; the one that failed is closed.
			if status, body, err := fetch(t, c, url); status != 200 || body != "ok" || err != nil {
				t.Fatalf("next request: %d %q %v", status, body, err)
			}
			if got := be.accepted(); got != tc.conns {
				t.Fatalf("backend accepted %d connections, want %d: %s", got, tc.conns, be.summary())
			}
			if tc.conns > 1 {
				eventually(t, "the failed connection closed", func() bool { return be.isClosed(0) })
			}
			if got := h.sessionsOpened("h3"); got != 1 {
				t.Fatalf("sessions opened = %v, want 1", got)
			}
			if got := testutil.ToFloat64(h.srv.metrics.sessionsActive); got != 1 {
				t.Fatalf("sessions active = %v, want 1", got)
			}
		})
	}
	// Every case's proxy, backend and client are closed by now.
	eventually(t, fmt.Sprintf("descriptors back to %d", fds), func() bool { return openFDs(t) <= fds })
}

// TestFailingBackendMovesTheSession: with passive health checks, a backend
// that fails a session's request is marked down, and the session's next
// request goes to the other backend, on a connection of its own.
func TestFailingBackendMovesTheSession(t *testing.T) {
	var failing [2]atomic.Bool
	var bes [2]*rawBackend
	for i := range bes {
		bes[i] = startRawBackend(t, func(c net.Conn, req *http.Request) bool {
			if failing[i].Load() {
				resetConn(c)
				return false
			}
			_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nb"+strconv.Itoa(i))
			return err == nil
		})
	}
	h := startProxy(t, siteFor(" {\n\t\tmax_fails 1\n\t\tfail_duration 1m\n\t}", bes[0].Addr(), bes[1].Addr()), nil)
	c := h.dial(t)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	status, body, err := fetch(t, c, url)
	if status != 200 || err != nil {
		t.Fatalf("first request: %d %q %v", status, body, err)
	}
	home := int(body[1] - '0')
	failing[home].Store(true)
	if status, _, _ := fetch(t, c, url); status != http.StatusBadGateway {
		t.Fatalf("request to the failing backend: %d, want 502", status)
	}
	for range 3 {
		if status, body, err := fetch(t, c, url); status != 200 || body != "b"+strconv.Itoa(1-home) || err != nil {
			t.Fatalf("after the failure: %d %q %v, want 200 from b%d", status, body, err, 1-home)
		}
	}
	if got := bes[1-home].accepted(); got != 1 {
		t.Fatalf("the other backend accepted %d connections, want 1", got)
	}
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("sessions opened = %v, want 1", got)
	}
	if e := h.logged("session moved"); len(e) != 1 {
		t.Fatalf("%d session moved log lines, want 1", len(e))
	}
}
