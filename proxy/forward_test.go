package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// echoed is what headerEcho tells about the request it got.
type echoed struct {
	Host             string
	Header           http.Header
	TransferEncoding []string
	ContentLength    int64
	Body             string
	Proto            string
	Trailer          http.Header
}

// headerEcho answers with what it received, and sends hop-by-hop fields of
// its own that must not reach the client.
func headerEcho(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Connection", "X-Internal")
	w.Header().Set("X-Internal", "secret")
	w.Header().Set("Keep-Alive", "timeout=5")
	w.Header().Set("Alt-Svc", `h2=":9999"`)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(echoed{Host: r.Host, Header: r.Header, TransferEncoding: r.TransferEncoding,
		ContentLength: r.ContentLength, Body: string(body), Proto: r.Proto, Trailer: r.Trailer})
}

func decodeEcho(t *testing.T, body string) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return e
}

func TestForwardingHeaders(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/path?q=1"
	resp, body := do(t, c, "GET", url, nil, map[string]string{
		"X-Forwarded-For":   "6.6.6.6",
		"X-Forwarded-Host":  "evil.test",
		"X-Forwarded-Proto": "http",
		"Forwarded":         "for=6.6.6.6",
		"X-Real-Ip":         "6.6.6.6",
		"User-Agent":        "roamgate-test",
	})
	e := decodeEcho(t, body)
	host := "localhost:" + strconv.Itoa(h.port)
	clientPort := c.LocalAddr().Port
	for k, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "https",
		"X-Forwarded-Host":  host,
		"Forwarded":         `for="127.0.0.1:` + strconv.Itoa(clientPort) + `";host="` + host + `";proto=https`,
		"X-Real-Ip":         "",
		"User-Agent":        "roamgate-test",
	} {
		if got := strings.Join(e.Header[k], ","); got != want {
			t.Errorf("backend got %s %q, want %q", k, got, want)
		}
	}
	if e.Host != host {
		t.Errorf("backend got Host %q, want %q", e.Host, host)
	}
	if e.Proto != "HTTP/1.1" || len(e.TransferEncoding) != 0 || e.ContentLength != 0 {
		t.Errorf("a GET went upstream as %s TE=%v CL=%d", e.Proto, e.TransferEncoding, e.ContentLength)
	}
	for _, k := range []string{"Connection", "X-Internal", "Keep-Alive"} {
		if v := resp.Header.Get(k); v != "" {
			t.Errorf("client got hop-by-hop %s: %q", k, v)
		}
	}
	if v := resp.Header.Get("Alt-Svc"); v != "" {
		t.Errorf("client got the backend's Alt-Svc %q", v)
	}
}

// TestConnectionListedFieldsOverTCP: on HTTP/1.1, fields the client's
// Connection header names are hop-by-hop too (RFC 9110 §7.6.1).
func TestConnectionListedFieldsOverTCP(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	conn, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), h.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Secret\r\n"+
		"X-Secret: 1\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers, gzip\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	e := decodeEcho(t, string(body))
	for _, k := range []string{"Connection", "X-Secret", "Proxy-Authorization", "Keep-Alive"} {
		if v, ok := e.Header[k]; ok {
			t.Errorf("backend got %s: %q", k, v)
		}
	}
	if te := e.Header.Get("Te"); te != "trailers" {
		t.Errorf("backend got TE %q, want trailers", te)
	}
}

// TestTCPListener: the same site over TLS on TCP, HTTP/1.1 and HTTP/2, with
// Alt-Svc pointing at HTTP/3 on the same port. A TCP connection is a session
// of its own: its requests share one upstream connection, another TCP
// connection gets another.
func TestTCPListener(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"
	dialer := &net.Dialer{}
	for _, tc := range []struct {
		name, proto string
		h2          bool
	}{{"http/1.1", "HTTP/1.1", false}, {"h2", "HTTP/2.0", true}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{
				TLSClientConfig:   h.clientTLS(),
				ForceAttemptHTTP2: tc.h2,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return dialer.DialContext(ctx, "tcp", h.srv.Listeners()[0].TCP[0].String())
				},
			}
			if !tc.h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			var conns []int
			for i := range 4 {
				if i == 2 {
					tr.CloseIdleConnections() // a new TCP connection: a new session
				}
				resp, body := do(t, tr, "GET", url, nil, nil)
				if resp.Proto != tc.proto {
					t.Fatalf("proto %s, want %s", resp.Proto, tc.proto)
				}
				if got, want := resp.Header.Get("Alt-Svc"), `h3=":`+strconv.Itoa(h.port)+`"; ma=2592000`; got != want {
					t.Fatalf("Alt-Svc %q, want %q", got, want)
				}
				var r struct{ Conn int }
				json.Unmarshal([]byte(body), &r)
				conns = append(conns, r.Conn)
			}
			if conns[0] != conns[1] || conns[2] != conns[3] || conns[1] == conns[2] {
				t.Fatalf("upstream connections %v: want one per TCP connection, kept while it lives", conns)
			}
			eventually(t, "the first TCP session's upstream connection to close", func() bool {
				for _, c := range app.ClosedConns() {
					if c == conns[0] {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestSessionEndClosesUpstreamConnections: when a client's QUIC connection
// closes, its session's upstream connections close too (the backend sees
// them go), and the session count returns to zero.
func TestSessionEndClosesUpstreamConnections(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	r := seen(t, c, h, "c1")
	if got := testutil.ToFloat64(h.srv.metrics.sessionsActive); got != 1 {
		t.Fatalf("active sessions = %v, want 1", got)
	}
	c.Close()
	eventually(t, "backend to see the upstream connection close", func() bool {
		closed := app.ClosedConns()
		return len(closed) == 1 && closed[0] == r.Conn
	})
	eventually(t, "no active session", func() bool { return testutil.ToFloat64(h.srv.metrics.sessionsActive) == 0 })
}

// TestServerSentEventsFlushEventByEvent: each event reaches the client while
// the backend waits before sending the next; a buffering proxy would hang.
func TestServerSentEventsFlushEventByEvent(t *testing.T) {
	next := make(chan struct{})
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 1; i <= 3; i++ {
			io.WriteString(w, "data: event "+strconv.Itoa(i)+"\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(10 * time.Second):
				return
			}
		}
	}))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/events", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	for i := 1; i <= 3; i++ {
		got := make(chan string, 1)
		go func() {
			line, _ := br.ReadString('\n')
			br.ReadString('\n')
			got <- line
		}()
		select {
		case line := <-got:
			if want := "data: event " + strconv.Itoa(i) + "\n"; line != want {
				t.Fatalf("event %d: %q, want %q", i, line, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d did not arrive while the backend waited: the proxy buffered it", i)
		}
		next <- struct{}{}
	}
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestDeadBackendIs502: an unreachable backend gets the client a 502 and the
// log a line with the reason.
func TestDeadBackendIs502(t *testing.T) {
	dead := deadAddr(t)
	h := startProxy(t, siteFor("", dead), nil)
	c := h.dial(t)
	resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	entries := h.logged("upstream request failed")
	if len(entries) != 1 {
		t.Fatalf("%d failure log lines, want 1", len(entries))
	}
	f := entries[0].ContextMap()
	if f["status"] != int64(502) || f["backend"] != dead || !strings.Contains(f["error"].(string), "connection refused") {
		t.Fatalf("log fields %v", f)
	}
}

// TestFailureLogsAreRateLimited: a flood of failing requests is not a flood
// of log lines: per message, the first 20 a second are written, then every
// 100th (100 requests to a dead backend take milliseconds; the test would
// only see them all logged below 20 requests a second).
func TestFailureLogsAreRateLimited(t *testing.T) {
	h := startProxy(t, siteFor("", deadAddr(t)), nil)
	c := h.dial(t)
	const n = 100
	for range n {
		if resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, nil); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", resp.StatusCode)
		}
	}
	if got := len(h.logged("upstream request failed")); got < 20 || got >= n {
		t.Fatalf("%d failure log lines for %d failures, want 20 and more, fewer than %d", got, n, n)
	}
}

// TestSlowBackendIs504: a backend that sends no response header within
// response_header_timeout gets the client a 504 and a log line.
func TestSlowBackendIs504(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	h := startProxy(t, siteFor(" {\n\t\tresponse_header_timeout 100ms\n\t}", app.Addr()), nil)
	c := h.dial(t)
	resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, nil)
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504", resp.StatusCode)
	}
	entries := h.logged("upstream request failed")
	if len(entries) != 1 || !strings.Contains(entries[0].ContextMap()["error"].(string), "timeout awaiting response header") {
		t.Fatalf("log lines %v", entries)
	}
}

// TestUnknownHostIs421: a host no site serves gets 421 Misdirected Request,
// never another site's content.
func TestUnknownHostIs421(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	resp, _ := do(t, c, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, map[string]string{"Host": "other.test"})
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("status %d, want 421", resp.StatusCode)
	}
	if n := len(app.Requests()); n != 0 {
		t.Fatalf("backend got %d requests", n)
	}
}

// TestRequestBodies: bodies of known and unknown length go through intact:
// a known length keeps its Content-Length, an unknown one streams chunked.
func TestRequestBodies(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/up"

	_, body := do(t, c, "POST", url, strings.NewReader("hello"), nil)
	if e := decodeEcho(t, body); e.Body != "hello" || e.ContentLength != 5 || len(e.TransferEncoding) != 0 {
		t.Fatalf("known length: %+v", e)
	}

	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("stream"))
		time.Sleep(20 * time.Millisecond)
		pw.Write([]byte("ing"))
		pw.Close()
	}()
	_, body = do(t, c, "POST", url, pr, nil)
	if e := decodeEcho(t, body); e.Body != "streaming" || e.ContentLength != -1 || strings.Join(e.TransferEncoding, ",") != "chunked" {
		t.Fatalf("unknown length: %+v", e)
	}
	if n := len(app.Requests()); n != 2 {
		t.Fatalf("backend got %d requests", n)
	}
}

// TestTrailersBothWays: an HTTP/3 client's request trailer reaches the
// HTTP/1.1 backend (chunked), and the backend's response trailer reaches the
// client.
func TestTrailersBothWays(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Response-Sum")
		io.WriteString(w, string(body)+" / request trailer "+r.Trailer.Get("X-Request-Sum"))
		w.(http.Flusher).Flush()
		w.Header().Set("X-Response-Sum", "after-body")
	}))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	pr, pw := io.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "https://localhost:"+strconv.Itoa(h.port)+"/", pr)
	req.Trailer = http.Header{"X-Request-Sum": nil}
	go func() {
		pw.Write([]byte("part one,"))
		time.Sleep(10 * time.Millisecond)
		pw.Write([]byte(" part two"))
		req.Trailer.Set("X-Request-Sum", "42")
		pw.Close()
	}()
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := "part one, part two / request trailer 42"; string(body) != want {
		t.Fatalf("body %q, want %q", body, want)
	}
	if got := resp.Trailer.Get("X-Response-Sum"); got != "after-body" {
		t.Fatalf("response trailer %q, want after-body (trailer %v)", got, resp.Trailer)
	}
}

// TestLargeBodiesStream: 8 MiB up and down through the proxy, byte-exact.
func TestLargeBodiesStream(t *testing.T) {
	app := startApp(t, "app", nil) // POST /echo
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	data := make([]byte, 8<<20)
	rand.Read(data)
	resp, body := do(t, c, "POST", "https://localhost:"+strconv.Itoa(h.port)+"/echo", strings.NewReader(string(data)), nil)
	if resp.StatusCode != http.StatusOK || sha256.Sum256([]byte(body)) != sha256.Sum256(data) {
		t.Fatalf("echo of 8 MiB: status %d, %d bytes back", resp.StatusCode, len(body))
	}
}

// TestGracefulShutdown: on shutdown, HTTP/3 clients get GOAWAY; a request in
// flight finishes with its full response, a new one is refused, and every
// session's upstream connections close.
func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	url := "https://localhost:" + strconv.Itoa(h.port)

	var wg sync.WaitGroup
	wg.Go(func() {
		resp, body := do(t, c, "GET", url+"/slow", nil, nil)
		if resp.StatusCode != http.StatusOK || body != "done /slow" {
			t.Errorf("in-flight request: %d %q", resp.StatusCode, body)
		}
	})
	eventually(t, "the slow request at the backend", func() bool { return len(app.Requests()) == 1 })

	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdownDone <- h.srv.Shutdown(ctx)
	}()
	// Wait until the GOAWAY arrived: new requests fail.
	eventually(t, "new requests to be refused", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/new", nil)
		resp, err := c.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
	close(release)
	wg.Wait()
	select {
	case err := <-shutdownDone:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish")
	}
	// A probe sent before the shutdown began may have been served; every
	// upstream connection the backend saw must close.
	conns := map[int]bool{}
	for _, r := range app.Requests() {
		conns[r.Conn] = true
	}
	eventually(t, "the backend to see every upstream connection close", func() bool { return len(app.ClosedConns()) == len(conns) })
}

// TestConcurrentUploadsAndEarlyAnswers: many clients stream request bodies
// at once while the backend answers some before reading them. Every
// exchange gets its own answer with its own header, and (under -race) no
// request's pooled upstream form is touched by its body writer once a
// later request has taken it.
func TestConcurrentUploadsAndEarlyAnswers(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Tag", r.Header.Get("X-Tag"))
		if r.URL.Path == "/early" {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	}))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	const clients, streams, rounds = 6, 4, 6
	var wg sync.WaitGroup
	for i := range clients {
		c := h.dial(t)
		for j := range streams {
			wg.Go(func() {
				for k := range rounds {
					tag := fmt.Sprintf("%d-%d-%d", i, j, k)
					early := k%3 == 2
					size := 1 + (i*7919+j*104729+k*1299709)%(64<<10)
					path := "/up"
					if early {
						path, size = "/early", 256<<10
					}
					pr, pw := io.Pipe()
					go func() {
						chunk := make([]byte, 8<<10)
						for left := size; left > 0; left -= len(chunk) {
							if _, err := pw.Write(chunk[:min(left, len(chunk))]); err != nil {
								return
							}
						}
						pw.Close()
					}()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					req, _ := http.NewRequestWithContext(ctx, "POST", "https://localhost:"+strconv.Itoa(h.port)+path, pr)
					req.Header.Set("X-Tag", tag)
					resp, err := c.RoundTrip(req)
					if err != nil {
						cancel()
						pr.CloseWithError(err)
						t.Errorf("%s: %v", tag, err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					cancel()
					pr.CloseWithError(io.ErrClosedPipe)
					if got := resp.Header.Get("X-Seen-Tag"); got != tag {
						t.Errorf("%s: answer for %q", tag, got)
					}
					switch {
					case early && resp.StatusCode != http.StatusRequestEntityTooLarge:
						t.Errorf("%s: status %d, want 413", tag, resp.StatusCode)
					case !early && (resp.StatusCode != http.StatusOK || string(body) != strconv.Itoa(size)):
						t.Errorf("%s: %d %q, want 200 %d", tag, resp.StatusCode, body, size)
					}
				}
			})
		}
	}
	wg.Wait()
}
