package upstream

import (
	"bufio"
	"bytes"
	"io"
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

// FuzzWriteTrailer: a trailer section the writer accepts ends a chunked
// body as exactly the fields given; nothing it writes becomes a second
// request or a field of its own (issue 12: a trailer value with CR LF,
// arriving after the body was streamed, must never reach the backend as
// a complete message with a field injected).
func FuzzWriteTrailer(f *testing.F) {
	f.Add("X-Checksum", "abc")
	f.Add("X-Evil", "a\r\nX-Injected: 1")
	f.Add("X-Evil", "a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	f.Add("X\r\nY", "1")
	f.Add("Content-Length", "5")
	f.Fuzz(func(t *testing.T, name, value string) {
		var buf bytes.Buffer
		buf.WriteString("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
		bw := bufio.NewWriter(&buf)
		if err := writeTrailer(bw, http.Header{name: {value}}); err != nil {
			return
		}
		bw.Flush()
		wire := buf.String()
		br := bufio.NewReader(&buf)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return // net/http refuses some trailers; refusing is safe
		}
		if br.Buffered() != 0 {
			t.Fatalf("bytes follow the trailer section: %q", wire)
		}
		for k := range req.Trailer {
			if k != textproto.CanonicalMIMEHeaderKey(name) {
				t.Fatalf("trailer field %q appeared: %q", k, wire)
			}
		}
	})
}
