package upstream

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
	"net/url"
	"testing"
)

// FuzzWriteRequestHeader: whatever the proxy hands the wire writer, the
// bytes on the upstream connection are either refused or exactly one
// HTTP/1.1 request that parses back with the same method, target, host and
// fields: nothing injected, nothing split off into a second request.
func FuzzWriteRequestHeader(f *testing.F) {
	f.Add("GET", "/path?q=1", "example.com", "X-Custom", "value")
	f.Add("POST", "/", "example.com", "X-Evil", "a\r\nX-Injected: 1")
	f.Add("GET", "/ HTTP/1.1\r\nX: y", "example.com", "A", "b")
	f.Add("GET", "/", "example.com\r\nX-Injected: 1", "A", "b")
	f.Add("G ET", "/", "example.com", "A", "b")
	f.Add("GET", "/", "example.com", "Content-Length", "5")
	f.Add("GET", "/", "example.com", "Transfer-Encoding", "chunked")
	f.Add("GET", "/", "[::1]:8443", "A", "\t b\t")
	f.Fuzz(func(t *testing.T, method, target, host, name, value string) {
		req := &http.Request{Method: method, RequestURI: target, URL: &url.URL{Path: "/"}, Host: host,
			Header: http.Header{name: {value}}}
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := writeRequestHeader(bw, req, false, false); err != nil {
			return
		}
		bw.Flush()
		wire := buf.String()
		br := bufio.NewReader(&buf)
		back, err := http.ReadRequest(br)
		if err != nil {
			// net/http is stricter in places (a field name it cannot
			// canonicalize, an odd Host); refusing is safe, splitting is not.
			return
		}
		if br.Buffered() != 0 {
			t.Fatalf("a second request follows the first: %q", wire)
		}
		wantTarget := target
		if wantTarget == "" {
			wantTarget = req.URL.RequestURI() // the writer's fallback
		}
		if back.Method != method || back.RequestURI != wantTarget || back.Host != host {
			t.Fatalf("request line or host changed: %q %q %q → %q %q %q", method, target, host, back.Method, back.RequestURI, back.Host)
		}
		for k, vv := range back.Header {
			if k == "Content-Length" && vv[0] == "0" && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
				continue // the writer's own: an empty body that its method would have
			}
			if k != textproto.CanonicalMIMEHeaderKey(name) {
				t.Fatalf("field %q appeared: %q", k, wire)
			}
		}
	})
}
