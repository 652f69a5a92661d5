package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// fuzzSession is a session as outRequest sees one, without a server.
func fuzzSession() *session {
	remote := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4433}
	ap := addrPort(remote)
	return &session{id: 1, proto: "h3", xff: []string{ap.Addr().String()}, fwdFor: forwardedFor(ap)}
}

// FuzzTranslate feeds outRequest requests with arbitrary header fields, as
// an HTTP/3 or HTTP/2 client could send them (those carry any bytes), and
// checks what a request smuggler would need to get through:
//   - an accepted request's header, written as HTTP/1.1 the way
//     net/http.Header.Write does, parses back as exactly one request
//     carrying the same fields (nothing injected, nothing split off);
//   - no hop-by-hop or client forwarding field survives, and the
//     forwarding fields are the proxy's own;
//   - the request line and Host (quic-go passes a :path, :authority or
//     :method with spaces) parse back unchanged, and an accepted trailer
//     holds no CR, LF or NUL and no field trailers must not carry.
func FuzzTranslate(f *testing.F) {
	f.Add("X-Custom", "value", "GET", "/path?q=1", "localhost", "", "", 3)
	f.Add("X-Evil", "a\r\nX-Injected: 1", "GET", "/", "localhost", "", "", 3)
	f.Add("Transfer-Encoding", "chunked", "POST", "/", "localhost", "", "", 2)
	f.Add("X-Forwarded-For", "6.6.6.6", "GET", "/", "localhost", "", "", 1)
	f.Add("Connection", "X-Secret", "GET", "/", "localhost", "", "", 1)
	f.Add("Te", "trailers, gzip", "GET", "/", "localhost", "", "", 3)
	f.Add("Content-Length", "5", "GET", "/", "localhost", "", "", 3)
	f.Add("Upgrade", "h2c", "GET", "/", "localhost", "", "", 1)
	f.Add("X\x00Y", "1", "GET", "/", "localhost", "", "", 3)
	f.Add("Host", "evil.test", "GET", "/", "localhost", "", "", 3)
	// Issue 12: what quic-go lets through in pseudo-headers and trailers.
	f.Add("A", "b", "GET", "/x SMUGGLED", "localhost", "", "", 3)
	f.Add("A", "b", "GET", "/x HTTP/1.1\r\nHost: evil", "localhost", "", "", 3)
	f.Add("A", "b", "GET", "/", "localhost:8443 evil", "", "", 3)
	f.Add("A", "b", "GET /evil", "/", "localhost", "", "", 3)
	f.Add("A", "b", "POST", "/", "localhost", "X-Trailer", "a\r\nX-Injected: 1", 3)
	f.Add("A", "b", "POST", "/", "localhost", "Content-Length", "0", 3)
	f.Add("A", "b", "POST", "/", "localhost", "X-Checksum", "abc", 2)
	f.Fuzz(func(t *testing.T, name, value, method, target, host, trName, trValue string, major int) {
		if major < 2 || major > 3 {
			major = 3 // the protocols that carry any bytes in every field
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			u = &url.URL{Path: "/"}
		}
		r := httptest.NewRequest(http.MethodGet, "https://localhost/", nil)
		r.Method, r.URL, r.RequestURI, r.Host = method, u, target, host
		r.ProtoMajor = major
		r.Header = http.Header{"Accept": {"*/*"}}
		r.Header.Add(name, value) // canonical keys, as http3 and net/http build them
		r.Body = http.NoBody
		if trName != "" {
			// A short body, read whole before anything goes upstream, and
			// the trailer that came at its end.
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("x")), 1
			r.Trailer = http.Header{textproto.CanonicalMIMEHeaderKey(trName): {trValue}}
		}
		out, err := outRequest(new(outgoing), httptest.NewRecorder(), r, fuzzSession(), "", false)
		if err != nil {
			if _, ok := err.(*badRequestError); !ok {
				t.Fatalf("refused with %T %v, want a 400", err, err)
			}
			return
		}
		for k := range out.Header {
			if (hopByHop[k] && k != "Te") || k == "Expect" {
				t.Fatalf("hop-by-hop field %q went upstream", k)
			}
		}
		if got := out.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "192.0.2.7" {
			t.Fatalf("X-Forwarded-For %q", got)
		}
		if got := out.Header["X-Real-Ip"]; got != nil {
			t.Fatalf("client X-Real-Ip went upstream: %q", got)
		}
		for k, vv := range out.Trailer {
			if forbiddenTrailers[k] || !httpguts.ValidHeaderFieldName(k) || strings.ContainsAny(strings.Join(vv, ""), "\r\n\x00") {
				t.Fatalf("trailer %q: %q went upstream", k, vv)
			}
		}

		// The request line, Host and header as HTTP/1.1 parse back as
		// exactly one request with the same line and fields.
		var wire bytes.Buffer
		wire.WriteString(out.Method + " " + out.RequestURI + " HTTP/1.1\r\nHost: " + out.Host + "\r\n")
		if err := out.Header.Write(&wire); err != nil {
			t.Fatal(err)
		}
		wire.WriteString("\r\n")
		br := bufio.NewReader(&wire)
		back, err := http.ReadRequest(br)
		if err != nil {
			if strings.ContainsAny(out.Method+out.RequestURI+out.Host, " \r\n\t") {
				t.Fatalf("accepted a request line that does not parse: %v\n%q", err, wire.String())
			}
			return // net/http is stricter in places (an odd Host); refusing is safe
		}
		if br.Buffered() != 0 {
			t.Fatalf("a second request hides in the head: %q", wire.String())
		}
		if back.Method != out.Method || back.RequestURI != out.RequestURI || back.Host != out.Host {
			t.Fatalf("request line changed: %q", wire.String())
		}
		sent := map[string]bool{}
		for k := range out.Header {
			sent[textproto.CanonicalMIMEHeaderKey(k)] = true
		}
		for k := range back.Header {
			if !sent[textproto.CanonicalMIMEHeaderKey(k)] {
				t.Fatalf("field %q appeared on the wire", k)
			}
		}
		if strings.ContainsAny(name+value, "\r\n\x00") && out.Header[textproto.CanonicalMIMEHeaderKey(name)] != nil {
			t.Fatalf("a field with CR, LF or NUL was accepted: %q: %q", name, value)
		}
	})
}

func TestSameOriginRedirects(t *testing.T) {
	for in, want := range map[string]string{
		"/new/x":                  "/new/x",
		"//evil.test/x":           "/evil.test/x",
		"/\\evil.test":            "/evil.test",
		"///\\//evil.test":        "/evil.test",
		"https://new.example.com": "https://new.example.com",
		"/":                       "/",
	} {
		if got := sameOrigin(in); got != want {
			t.Errorf("sameOrigin(%q) = %q, want %q", in, got, want)
		}
	}
}
