package upstream

import (
	"bufio"
	"context"
	"errors"
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

// The tests in this file hold a lease to the invariant's bound: it holds no
// more connections than its client has requests in flight, and a client's
// cancel never costs the session its connection (issue 12).

// TestClientCancelKeepsTheConnection: a client that goes away after its
// request was sent whole — while the backend thinks, or midway through the
// response body — gets its context's error, and the backend's answer is read
// and discarded so the session's next request goes over the same
// connection. On main the connection was aborted and replaced, so a legacy
// backend saw a new connection after every cancel.
func TestClientCancelKeepsTheConnection(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/think": // answers 100 ms after the request
			time.Sleep(100 * time.Millisecond)
			io.WriteString(w, "late")
		case "/stream": // 64 KiB, the second half 100 ms after the first
			w.Header().Set("Content-Length", strconv.Itoa(64<<10))
			io.WriteString(w, strings.Repeat("a", 32<<10))
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
			io.WriteString(w, strings.Repeat("b", 32<<10))
		default:
			io.WriteString(w, "ok")
		}
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	p.armDelay = testArmDelay
	l := p.Lease(1, nil)
	defer l.Close()
	get(t, l, "/")

	// Cancelled while the backend thinks: before the watch is armed and after.
	for _, after := range []time.Duration{testArmDelay / 5, 4 * testArmDelay} {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(after, cancel)
		if _, err := l.RoundTrip(newReq(t, ctx, "GET", "/think", nil, 0)); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled after %v: err = %v, want context.Canceled", after, err)
		}
		if got := get(t, l, "/"); got != "ok" {
			t.Fatalf("next request: %q", got)
		}
	}

	// Cancelled midway through the body.
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := l.RoundTrip(newReq(t, ctx, "GET", "/stream", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	var rerr error
	for rerr == nil {
		_, rerr = resp.Body.Read(make([]byte, 1000))
	}
	if !errors.Is(rerr, context.Canceled) {
		t.Fatalf("read after cancel: %v, want context.Canceled", rerr)
	}
	resp.Body.Close()
	if got := get(t, l, "/"); got != "ok" {
		t.Fatalf("next request: %q", got)
	}

	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1: %v", len(c), c)
	}
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonAborted)); got != 0 {
		t.Fatalf("aborted closes = %v, want 0", got)
	}
}

// TestCancelledExchangeThatDoesNotEndIsClosed: the backend's answer to a
// request its client left must end within drainTimeout; one that does not
// (a long poll) closes the connection, and the next request gets a
// replacement.
func TestCancelledExchangeThatDoesNotEndIsClosed(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/poll" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "ok")
	})
	defer close(release)
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := l.RoundTrip(newReq(t, ctx, "GET", "/poll", nil, 0)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	if d := time.Since(start); d > drainTimeout+5*time.Second {
		t.Fatalf("round trip took %v", d)
	}
	if got := get(t, l, "/"); got != "ok" {
		t.Fatalf("next request: %q", got)
	}
	if got := testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonAborted)); got != 1 {
		t.Fatalf("aborted closes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "replace")); got != 1 {
		t.Fatalf("replacements = %v, want 1", got)
	}
}

// TestCancelDuringUploadAbortsTheRequest: a client that goes away while its
// request body is still on the way leaves a request the backend can never
// see complete: the connection is closed at once.
func TestCancelDuringUploadAbortsTheRequest(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("part of a body"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.RoundTrip(newReq(t, ctx, "POST", "/up", pr, 1000)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	eventually(t, "the aborted connection to be counted", func() bool {
		return testutil.ToFloat64(m.ConnsClosed.WithLabelValues(b.addr(), reasonAborted)) == 1
	})
}

// TestConnectionIsFreeOnTheLastByte: the moment a reader has the last byte
// of a response of known length, its connection is idle, before the body is
// closed or read again; a request sent then reuses it, even with no wait
// for a busy connection at all.
func TestConnectionIsFreeOnTheLastByte(t *testing.T) {
	const size = 10000
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		io.WriteString(w, strings.Repeat("x", size))
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	p.growWait = 0
	l := p.Lease(1, nil)
	defer l.Close()
	for range 5 {
		resp, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/", nil, 0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		get(t, l, "/") // the previous body is still open
		resp.Body.Close()
	}
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1: %v", len(c), c)
	}
}

// TestRequestWaitsForAResponseAboutToEnd: a client that has every data byte
// of a chunked response sends its next request before the backend's last
// chunk arrives; the request waits for that connection rather than growing
// the set. A request sent while another streams for long dials after
// growWait.
func TestRequestWaitsForAResponseAboutToEnd(t *testing.T) {
	addr := rawBackend(t, func(_ int, c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/chunked" {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
				time.Sleep(30 * time.Millisecond)
				io.WriteString(c, "0\r\n\r\n")
				continue
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	p, m := newPool(t, Config{Backends: []string{addr}})
	p.growWait = 10 * time.Second
	l := p.Lease(1, nil)
	defer l.Close()
	resp, err := l.RoundTrip(newReq(t, context.Background(), "GET", "/chunked", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	next := make(chan string)
	go func() {
		s, err := tryGet(t, context.Background(), l, "/")
		if err != nil {
			s = err.Error()
		}
		next <- s
	}()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := <-next; got != "ok" {
		t.Fatalf("next request: %q", got)
	}
	if got := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(addr, "new")); got != 1 {
		t.Fatalf("connections opened = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.ConnWaits.WithLabelValues(addr, "reused")); got != 1 {
		t.Fatalf("waits that reused a connection = %v, want 1", got)
	}

	// A real second request in flight: after growWait it dials.
	p.growWait = 20 * time.Millisecond
	resp, err = l.RoundTrip(newReq(t, context.Background(), "GET", "/chunked", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	if got := get(t, l, "/"); got != "ok" {
		t.Fatalf("concurrent request: %q", got)
	}
	if d := time.Since(start); d < p.growWait {
		t.Fatalf("concurrent request dialled after %v, before growWait", d)
	}
	if got := testutil.ToFloat64(m.ConnWaits.WithLabelValues(addr, "dialled")); got != 1 {
		t.Fatalf("waits that dialled = %v, want 1", got)
	}
}

// TestRequestWaitsForAConnectionWhoseClientLeft: a client cancels a request
// and sends its next one at once; the backend is still answering the first.
// The next request waits for that exchange to finish and takes its
// connection: the set does not grow.
func TestRequestWaitsForAConnectionWhoseClientLeft(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/think" {
			time.Sleep(100 * time.Millisecond)
		}
		io.WriteString(w, "ok")
	})
	p, m := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = l.RoundTrip(newReq(t, ctx, "GET", "/think", nil, 0)) })
	eventually(t, "the request to reach the backend", func() bool { return len(b.conns()) == 1 })
	cancel()
	if got := get(t, l, "/"); got != "ok" {
		t.Fatalf("next request: %q", got)
	}
	wg.Wait()
	if c := b.conns(); len(c) != 1 {
		t.Fatalf("backend saw %d connections, want 1: %v", len(c), c)
	}
	if got := testutil.ToFloat64(m.ConnWaits.WithLabelValues(b.addr(), "reused")); got != 1 {
		t.Fatalf("waits that reused a connection = %v, want 1", got)
	}
}

// TestSetNeverOutgrowsTheClient: c workers on one lease, each with one
// request in flight at a time, some of them abandoning responses midway or
// while the backend thinks: the lease never holds more than c connections,
// and never opens more than c (a cancel costs no connection).
func TestSetNeverOutgrowsTheClient(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("slow") {
			time.Sleep(2 * time.Millisecond)
		}
		w.Header().Set("Content-Length", strconv.Itoa(20000))
		io.WriteString(w, strings.Repeat("x", 10000))
		w.(http.Flusher).Flush()
		io.WriteString(w, strings.Repeat("y", 10000))
	})
	for _, c := range []int{1, 2, 4} {
		t.Run(strconv.Itoa(c), func(t *testing.T) {
			p, m := newPool(t, Config{Backends: []string{b.addr()}})
			l := p.Lease(1, nil)
			defer l.Close()
			var mu sync.Mutex
			peak := 0
			var wg sync.WaitGroup
			for w := range c {
				wg.Go(func() {
					for i := range 60 {
						ctx, cancel := context.WithCancel(context.Background())
						path := "/?w=" + strconv.Itoa(w)
						if i%3 == 1 {
							path += "&slow"
						}
						resp, err := l.RoundTrip(newReq(t, ctx, "GET", path, nil, 0))
						if err == nil {
							switch i % 3 {
							case 0:
								io.Copy(io.Discard, resp.Body)
							case 1:
								cancel() // abandoned midway
								io.Copy(io.Discard, resp.Body)
							case 2:
								io.ReadFull(resp.Body, make([]byte, 100))
							}
							resp.Body.Close()
						}
						cancel()
						mu.Lock()
						peak = max(peak, l.Conns())
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if peak > c {
				t.Fatalf("lease held %d connections for %d requests in flight", peak, c)
			}
			opened := testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "new")) +
				testutil.ToFloat64(m.ConnsOpened.WithLabelValues(b.addr(), "replace"))
			if opened > float64(c) {
				t.Fatalf("lease opened %v connections for %d requests in flight", opened, c)
			}
		})
	}
}
