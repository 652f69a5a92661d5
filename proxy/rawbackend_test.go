package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawBackend is a TCP backend that records every byte each connection
// brings and answers each request it parses whole with a keep-alive 200
// (or as its answer function says): what a malformed request would make a
// legacy backend see, byte for byte.
type rawBackend struct {
	ln     net.Listener
	answer func(c net.Conn, req *http.Request) bool // false: close the connection
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    []*rawConn
	complete int // requests read whole (head and body)
}

type rawConn struct {
	bytes.Buffer // what arrived, guarded by rawBackend.mu
	closed       bool
}

// startRawBackend starts a raw backend on loopback; answer nil answers 200
// "ok" to every request.
func startRawBackend(t testing.TB, answer func(c net.Conn, req *http.Request) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, answer: answer}
	if b.answer == nil {
		b.answer = func(c net.Conn, _ *http.Request) bool {
			_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return err == nil
		}
	}
	b.wg.Go(b.accept)
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *rawBackend) Addr() string { return b.ln.Addr().String() }

func (b *rawBackend) accept() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		rc := &rawConn{}
		b.mu.Lock()
		b.conns = append(b.conns, rc)
		b.mu.Unlock()
		b.wg.Go(func() { b.serve(c, rc) })
	}
}

// recordingReader records what the backend reads from a connection.
type recordingReader struct {
	b  *rawBackend
	rc *rawConn
	c  net.Conn
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.c.Read(p)
	r.b.mu.Lock()
	r.rc.Write(p[:n])
	r.b.mu.Unlock()
	return n, err
}

func (b *rawBackend) serve(c net.Conn, rc *rawConn) {
	defer func() {
		c.Close()
		b.mu.Lock()
		rc.closed = true
		b.mu.Unlock()
	}()
	br := bufio.NewReader(&recordingReader{b, rc, c})
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		b.mu.Lock()
		b.complete++
		b.mu.Unlock()
		if !b.answer(c, req) {
			return
		}
	}
}

// received returns everything every connection brought, in accept order.
func (b *rawBackend) received() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, len(b.conns))
	for i, rc := range b.conns {
		out[i] = rc.String()
	}
	return out
}

// summary describes what each connection brought, each cut to 120 bytes.
func (b *rawBackend) summary() string {
	var s []string
	for _, r := range b.received() {
		if len(r) > 120 {
			r = r[:120] + "…(" + strconv.Itoa(len(r)) + " bytes)"
		}
		s = append(s, strconv.Quote(r))
	}
	return "[" + strings.Join(s, ", ") + "]"
}

// accepted is how many connections the backend accepted.
func (b *rawBackend) accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// requests is how many requests the backend read whole.
func (b *rawBackend) requests() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.complete
}

// allClosed reports whether every connection the backend accepted is closed.
func (b *rawBackend) allClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, rc := range b.conns {
		if !rc.closed {
			return false
		}
	}
	return true
}

// isClosed reports whether the i-th connection the backend accepted is
// closed.
func (b *rawBackend) isClosed(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return i < len(b.conns) && b.conns[i].closed
}
