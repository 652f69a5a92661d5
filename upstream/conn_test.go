package upstream

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// slowReader hands out its data one piece per Read, like a client streaming
// an upload.
type slowReader struct{ parts []string }

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts = r.parts[1:]
	return n, nil
}

func TestRequestBodies(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-TE", strings.Join(r.TransferEncoding, ","))
		w.Header().Set("X-CL", strconv.FormatInt(r.ContentLength, 10))
		w.Header().Set("X-Trailer", r.Trailer.Get("Checksum"))
		w.Write(body)
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()

	for _, tc := range []struct {
		name             string
		n                int64
		trailer          http.Header
		wantTE, wantCL   string
		wantTrailerValue string
	}{
		{name: "content-length", n: 11, wantCL: "11"},
		{name: "chunked", n: -1, wantTE: "chunked", wantCL: "-1"},
		{name: "chunked with trailer", n: -1, trailer: http.Header{"Checksum": {"abc"}}, wantTE: "chunked", wantCL: "-1", wantTrailerValue: "abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newReq(t, context.Background(), http.MethodPost, "/up", io.NopCloser(&slowReader{parts: []string{"hello", " ", "world"}}), tc.n)
			req.Trailer = tc.trailer
			resp, err := l.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(got) != "hello world" {
				t.Fatalf("echo %q", got)
			}
			if te, cl := resp.Header.Get("X-TE"), resp.Header.Get("X-CL"); te != tc.wantTE || cl != tc.wantCL {
				t.Fatalf("backend saw TE=%q CL=%q, want %q %q", te, cl, tc.wantTE, tc.wantCL)
			}
			if tr := resp.Header.Get("X-Trailer"); tr != tc.wantTrailerValue {
				t.Fatalf("trailer %q, want %q", tr, tc.wantTrailerValue)
			}
		})
	}
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("bodies used %d connections, want 1", len(c))
	}
}

func TestShortBodyIsNotSentAsComplete(t *testing.T) {
	got := make(chan error, 1)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		got <- err
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	req := newReq(t, context.Background(), http.MethodPut, "/", io.NopCloser(strings.NewReader("abc")), 10)
	if _, err := l.RoundTrip(req); err == nil {
		t.Fatal("a body shorter than its Content-Length went through")
	}
	if err := <-got; err == nil {
		t.Fatal("backend read a complete body")
	}
}

// TestEarlyResponseAbandonsTheBody: a backend that answers without reading
// the upload (413, auth failure) gets its answer to the client at once, and
// the connection, whose request is unfinished, is not reused.
func TestEarlyResponseAbandonsTheBody(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			// Connection: close stops net/http from draining the body
			// before it answers.
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		io.WriteString(w, "ok")
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	pr, pw := io.Pipe() // a client that never finishes its upload
	defer pw.Close()
	go pw.Write([]byte("partial"))
	resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/", pr, -1))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := get(t, l, "/next"); got != "ok" {
		t.Fatalf("next: %q", got)
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "replace")); got != 1 {
		t.Fatalf("replacements = %v, want 1", got)
	}
}

// TestClosingAnUnreadBodyKeepsTheConnection: a client that goes away before
// reading a small response does not cost the session its connection.
func TestClosingAnUnreadBodyKeepsTheConnection(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 10000))
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	for range 3 {
		resp, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 10)
		io.ReadFull(resp.Body, buf)
		resp.Body.Close()
	}
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1", len(c))
	}
}

// TestCancelMidResponse: when the client goes away during an endless stream,
// the read fails with the context's error and the connection is closed.
func TestCancelMidResponse(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		for {
			if _, err := io.WriteString(w, "data: tick\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := l.RoundTrip(newReq(t, ctx, "GET", "/events", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	var rerr error
	for rerr == nil {
		_, rerr = resp.Body.Read(buf)
	}
	if rerr != context.Canceled {
		t.Fatalf("read after cancel: %v, want context.Canceled", rerr)
	}
	resp.Body.Close()
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), "aborted")); got != 1 {
		t.Fatalf("aborted closes = %v, want 1", got)
	}
	if l.Conns() != 0 {
		t.Fatalf("lease kept %d conns", l.Conns())
	}
}

func TestBufferedReportsWhatIsReadable(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "second")
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	resp, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	if string(buf[:n]) != "first" {
		t.Fatalf("first read %q", buf[:n])
	}
	if bb := resp.Body.(interface{ Buffered() int }).Buffered(); bb > len("\r\n") {
		t.Fatalf("Buffered = %d after the first flush, want only framing", bb)
	}
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}
}
