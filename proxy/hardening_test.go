package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hardenedSite is the catalogue's Roamfile: a small header limit, so an
// oversized header block is cheap to send.
func hardenedSite(app string) string {
	return `{
	default_bind 127.0.0.1
	max_header_bytes 8KiB
}
localhost:0 {
	reverse_proxy ` + app + `
}
`
}

// reset is the outcome "the request stream was reset without a response":
// how HTTP/3 and HTTP/2 treat a malformed request (RFC 9114 §4.1.2, RFC
// 9113 §8.1.1).
var reset = h3Result{reset: true}

// TestMaliciousHTTP3Requests is the catalogue of request smuggling and
// malformed-request attempts over HTTP/3, written byte by byte on the
// stream. Each is refused, with a stream reset or the exact status, and the
// backend receives nothing.
func TestMaliciousHTTP3Requests(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, hardenedSite(app.Addr()), nil)
	c := dialRawH3(t, h)
	authority := "localhost:" + strconv.Itoa(h.port)
	big := strings.Repeat("a", 9<<10)
	for _, tc := range []struct {
		name   string
		fields []h3Field
		body   [][]byte
		want   h3Result
	}{
		{"CR LF in a value", getFields(h, h3Field{"x-evil", "a\r\nx-injected: 1"}), nil, reset},
		{"LF in a value", getFields(h, h3Field{"x-evil", "a\nb"}), nil, reset},
		{"NUL in a value", getFields(h, h3Field{"x-evil", "a\x00b"}), nil, reset},
		{"CR LF in a name", getFields(h, h3Field{"x-evil\r\nx-injected", "1"}), nil, reset},
		{"upper case name", getFields(h, h3Field{"X-Upper", "1"}), nil, reset},
		{"space in a name", getFields(h, h3Field{"x evil", "1"}), nil, reset},
		{"transfer-encoding", postFields(h, h3Field{"transfer-encoding", "chunked"}), [][]byte{[]byte("5\r\nhello\r\n0\r\n\r\n")}, reset},
		{"connection", getFields(h, h3Field{"connection", "close"}), nil, reset},
		{"keep-alive", getFields(h, h3Field{"keep-alive", "timeout=5"}), nil, reset},
		{"proxy-connection", getFields(h, h3Field{"proxy-connection", "keep-alive"}), nil, reset},
		{"upgrade outside extended CONNECT", getFields(h, h3Field{"upgrade", "websocket"}), nil, reset},
		{"te other than trailers", getFields(h, h3Field{"te", "gzip"}), nil, reset},
		{"content-length above the body", postFields(h, h3Field{"content-length", "10"}), [][]byte{[]byte("hello")}, h3Result{status: http.StatusBadRequest}},
		{"content-length below the body", postFields(h, h3Field{"content-length", "3"}), [][]byte{[]byte("hello")}, reset},
		{"differing content-lengths", postFields(h, h3Field{"content-length", "5"}, h3Field{"content-length", "6"}), [][]byte{[]byte("hello")}, reset},
		{"non-numeric content-length", postFields(h, h3Field{"content-length", "5, 5"}), [][]byte{[]byte("hello")}, reset},
		{"missing :path", []h3Field{{":method", "GET"}, {":scheme", "https"}, {":authority", authority}}, nil, reset},
		{"missing :method", []h3Field{{":scheme", "https"}, {":authority", authority}, {":path", "/"}}, nil, reset},
		{"duplicate :method", []h3Field{{":method", "GET"}, {":method", "POST"}, {":scheme", "https"}, {":authority", authority}, {":path", "/"}}, nil, reset},
		{"unknown pseudo-header", getFields(h, h3Field{":evil", "1"}), nil, reset},
		{"pseudo-header after a regular field", []h3Field{{":method", "GET"}, {"x-a", "1"}, {":scheme", "https"}, {":authority", authority}, {":path", "/"}}, nil, reset},
		{"response pseudo-header in a request", getFields(h, h3Field{":status", "200"}), nil, reset},
		{"absolute-form :path", []h3Field{{":method", "GET"}, {":scheme", "https"}, {":authority", authority}, {":path", "http://evil.test/"}}, nil, reset},
		{"host that disagrees with :authority", getFields(h, h3Field{"host", "evil.test"}), nil, reset},
		{"oversized header block", getFields(h, h3Field{"x-big", big}), nil, h3Result{status: http.StatusRequestHeaderFieldsTooLarge}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := c.request(t, tc.fields, tc.body...); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// The connection survived every refused stream: a good request passes.
	if got := c.request(t, getFields(h)); got.status != http.StatusOK {
		t.Fatalf("a well-formed request after the catalogue: %v", got)
	}
	if reqs := app.Requests(); len(reqs) != 1 {
		t.Fatalf("the backend received %d requests, want only the final good one: %+v", len(reqs), reqs)
	}
}

// TestMaliciousHTTP2Requests is the catalogue over HTTP/2. net/http refuses
// most of it with a 400 of its own, the rest with a reset.
func TestMaliciousHTTP2Requests(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, hardenedSite(app.Addr()), nil)
	big := strings.Repeat("a", 9<<10)
	for _, tc := range []struct {
		name   string
		fields []h3Field
		body   []byte
		want   h3Result
	}{
		{"CR LF in a value", getFields(h, h3Field{"x-evil", "a\r\nx-injected: 1"}), nil, reset},
		{"NUL in a value", getFields(h, h3Field{"x-evil", "a\x00b"}), nil, reset},
		{"upper case name", getFields(h, h3Field{"X-Upper", "1"}), nil, reset},
		{"transfer-encoding", postFields(h, h3Field{"transfer-encoding", "chunked"}), []byte("5\r\nhello\r\n0\r\n\r\n"), h3Result{status: http.StatusBadRequest}},
		{"connection", getFields(h, h3Field{"connection", "close"}), nil, h3Result{status: http.StatusBadRequest}},
		{"upgrade", getFields(h, h3Field{"upgrade", "websocket"}), nil, h3Result{status: http.StatusBadRequest}},
		{"te other than trailers", getFields(h, h3Field{"te", "gzip"}), nil, h3Result{status: http.StatusBadRequest}},
		{"content-length above the body", postFields(h, h3Field{"content-length", "10"}), []byte("hello"), h3Result{status: http.StatusBadRequest}},
		{"content-length below the body", postFields(h, h3Field{"content-length", "3"}), []byte("hello"), reset},
		{"differing content-lengths", postFields(h, h3Field{"content-length", "5"}, h3Field{"content-length", "6"}), []byte("hello"), h3Result{status: http.StatusBadRequest}},
		{"missing :path", getFields(h)[:3], nil, reset},
		{"oversized header block", getFields(h, h3Field{"x-big", big}), nil, h3Result{status: http.StatusRequestHeaderFieldsTooLarge}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawH2(t, h, tc.fields, tc.body); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			eventually(t, "the connection's session to end", func() bool { return testutilCounter(h.srv.metrics.sessionsActive) == 0 })
		})
	}
	if reqs := app.Requests(); len(reqs) != 0 {
		t.Fatalf("the backend received %d requests: %+v", len(reqs), reqs)
	}
}

// TestMaliciousHTTP1Requests is the catalogue over HTTP/1.1.
func TestMaliciousHTTP1Requests(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, hardenedSite(app.Addr()), nil)
	for _, tc := range []struct {
		name, raw string
		want      int
	}{
		{"differing content-lengths", "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", http.StatusBadRequest},
		{"bare CR inside a value", "GET / HTTP/1.1\r\nHost: localhost\r\nX-Evil: a\rb\r\n\r\n", http.StatusBadRequest},
		{"space before the colon", "GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", http.StatusBadRequest},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", http.StatusNotImplemented},
		{"upgrade to another protocol", "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", http.StatusBadRequest},
		// net/http allows 4 KiB over MaxHeaderBytes for its read buffer.
		{"oversized header block", "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + strings.Repeat("a", 16<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, _ := rawH1(t, h, tc.raw)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if reqs := app.Requests(); len(reqs) != 0 {
		t.Fatalf("the backend received %d requests: %+v", len(reqs), reqs)
	}
}

// TestHTTP1SmugglingIsNeutralized: requests HTTP/1.1 allows an intermediary
// to repair are repaired, never forwarded ambiguously. A request with both
// Content-Length and Transfer-Encoding is read by its chunked body (the
// Content-Length dropped) and the connection closes after the response, so
// what the client hid behind it never becomes a request (RFC 9112 §6.3);
// obsolete line folding becomes a space (RFC 9112 §5.2).
func TestHTTP1SmugglingIsNeutralized(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, hardenedSite(app.Addr()), nil)

	resp, _, rest := rawH1(t, h, "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
	if !resp.Close {
		t.Fatal("the connection stays open after a request with both framings")
	}
	if rest != "" {
		t.Fatalf("a second response followed: %q", rest)
	}
	reqs := app.Requests()
	if len(reqs) != 1 || reqs[0].Path != "/first" {
		t.Fatalf("backend got %+v, want only POST /first", reqs)
	}

	_, body, _ := rawH1(t, h, "GET /folded HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n b\r\n\r\n")
	if e := decodeEcho(t, body); e.Header.Get("X-Folded") != "a b" {
		t.Fatalf("folded field reached the backend as %q", e.Header.Get("X-Folded"))
	}
}

// rawH1 writes raw on a new TLS connection and reads one response. It
// returns the response, its body, and, when the response says the
// connection closes, whatever the server still sent before closing it.
func rawH1(t *testing.T, h *harness, raw string) (resp *http.Response, body, after string) {
	t.Helper()
	conn, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), h.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, raw)
	br := bufio.NewReader(conn)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Close {
		rest, _ := io.ReadAll(br) // until the server closes
		after = string(rest)
	}
	return resp, string(b), after
}
