package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/quic-go/quic-go"
)

// relay is h3-relay's handler: the least a proxy on this stack can do. It
// relays each request to the backend over a kept-alive TCP connection of
// the client's QUIC connection (so, like roamgate, a connection's requests
// stay on its own upstream connections, never shared), writing only the
// request line, Host and Content-Length, and reading only the status line,
// Content-Type and Content-Length of the answer. No header translation, no
// forwarding fields, no access log, no metrics, no timeouts: not a proxy to
// deploy, but the line below which no proxy on quic-go and TCP can go, so
// the benchmark tells what the hop costs from what roamgate adds to it.
type relay struct {
	backend string
}

// relayConns are one QUIC connection's upstream connections: idle ones
// wait for its next request, and all close with it.
type relayConns struct {
	mu     sync.Mutex
	idle   []*relayConn
	all    map[*relayConn]struct{}
	closed bool
}

type relayConn struct {
	nc net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

type relayConnsKey struct{}

// connContext gives each QUIC connection its upstream connections, closed
// when it ends.
func (rl *relay) connContext(ctx context.Context, c *quic.Conn) context.Context {
	rc := &relayConns{all: map[*relayConn]struct{}{}}
	context.AfterFunc(c.Context(), rc.close)
	return context.WithValue(ctx, relayConnsKey{}, rc)
}

// get takes an idle connection or dials one.
func (rc *relayConns) get(backend string) (*relayConn, error) {
	rc.mu.Lock()
	if n := len(rc.idle); n > 0 {
		c := rc.idle[n-1]
		rc.idle = rc.idle[:n-1]
		rc.mu.Unlock()
		return c, nil
	}
	rc.mu.Unlock()
	nc, err := net.Dial("tcp", backend)
	if err != nil {
		return nil, err
	}
	c := &relayConn{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 4<<10)}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.closed {
		nc.Close()
		return nil, net.ErrClosed
	}
	rc.all[c] = struct{}{}
	return c, nil
}

// put gives c back after a clean exchange, or closes it.
func (rc *relayConns) put(c *relayConn, clean bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if clean && !rc.closed {
		rc.idle = append(rc.idle, c)
		return
	}
	delete(rc.all, c)
	c.nc.Close()
}

func (rc *relayConns) close() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.closed = true
	for c := range rc.all {
		c.nc.Close() // ends an exchange in flight too
	}
	clear(rc.all)
	rc.idle = nil
}

func (rl *relay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc, _ := r.Context().Value(relayConnsKey{}).(*relayConns)
	if rc == nil || !(r.Method == http.MethodGet || r.Method == http.MethodPost && r.ContentLength >= 0) {
		http.Error(w, "h3-relay relays GETs and POSTs of known length on HTTP/3 only", http.StatusBadRequest)
		return
	}
	c, err := rc.get(rl.backend)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	answered, err := c.exchange(w, r)
	if err != nil && !answered {
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
	rc.put(c, err == nil)
}

// exchange relays r over c and reports whether it answered w.
func (c *relayConn) exchange(w http.ResponseWriter, r *http.Request) (answered bool, err error) {
	bw := c.bw
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	if r.Method == http.MethodPost {
		bw.WriteString("\r\nContent-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
	}
	bw.WriteString("\r\n\r\n")
	if r.Method == http.MethodPost {
		if _, err := io.CopyN(bw, r.Body, r.ContentLength); err != nil {
			return false, err
		}
	}
	if err := bw.Flush(); err != nil {
		return false, err
	}

	status, n, err := c.readHead(w.Header())
	if err != nil {
		return false, err
	}
	w.WriteHeader(status)
	for n > 0 {
		if _, err := c.br.Peek(1); err != nil {
			return true, err
		}
		p, _ := c.br.Peek(int(min(int64(c.br.Buffered()), n)))
		if _, err := w.Write(p); err != nil {
			return true, err
		}
		c.br.Discard(len(p))
		n -= int64(len(p))
	}
	return true, nil
}

var (
	headContentLength = []byte("content-length:")
	headContentType   = []byte("content-type:")
)

// readHead reads a response head, copies its Content-Type to hdr and
// returns its status and Content-Length (which it must have: the
// benchmark's backend always sends one).
func (c *relayConn) readHead(hdr http.Header) (status int, n int64, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, 0, fmt.Errorf("bad status line %q", line)
	}
	if status = int(digits(line[9:12])); status < 0 {
		return 0, 0, fmt.Errorf("bad status line %q", line)
	}
	n = -1
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		switch {
		case hasFoldPrefix(line, headContentLength):
			if n = digits(bytes.TrimSpace(line[len(headContentLength):])); n < 0 {
				return 0, 0, fmt.Errorf("bad Content-Length %q", line)
			}
		case hasFoldPrefix(line, headContentType):
			hdr["Content-Type"] = []string{string(bytes.TrimSpace(line[len(headContentType):]))}
		}
	}
	if n < 0 {
		return 0, 0, errors.New("response without Content-Length")
	}
	hdr["Content-Length"] = []string{strconv.FormatInt(n, 10)}
	return status, n, nil
}

// digits parses 1 to 18 decimal digits, without allocating; -1 if b is not
// that.
func digits(b []byte) int64 {
	if len(b) == 0 || len(b) > 18 {
		return -1
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func hasFoldPrefix(s, prefix []byte) bool {
	return len(s) >= len(prefix) && bytes.EqualFold(s[:len(prefix)], prefix)
}
