package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// TestRelay runs h3-relay in front of a real HTTP/1.1 backend and checks
// the floor it stands for keeps roamgate's invariant: each QUIC
// connection's requests go over its own kept-alive backend connection,
// never another client's, and those close when the QUIC connection does.
func TestRelay(t *testing.T) {
	var mu sync.Mutex
	open := map[string]bool{} // backend connections by the relay's port, open or not
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/x-from")
		fmt.Fprintf(w, "%s %s %s %d", r.Method, r.URL.RequestURI(), r.RemoteAddr, n)
	}))
	backend.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateNew:
			open[c.RemoteAddr().String()] = true
		case http.StateClosed:
			open[c.RemoteAddr().String()] = false
		}
	}
	backend.Start()
	defer backend.Close()

	// The relay serves with a self-signed certificate for 127.0.0.1,
	// written out as servePlain reads it.
	cert := edgetest.NewCert(t, "h3-relay")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for file, data := range map[string][]byte{certFile: cert.CertPEM, keyFile: cert.KeyPEM} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	rl := &relay{backend: backend.Listener.Addr().String()}
	var conns connCounter
	info, stop, err := servePlain(rl, rl.connContext, &conns, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	_, port, _ := net.SplitHostPort(info.Addr)
	base := "https://127.0.0.1:" + port

	// get sends one request through tr (one QUIC connection) and returns
	// the backend connection it came over.
	get := func(tr *http3.Transport, method, path string, body string) string {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: read: %v", method, path, err)
		}
		f := strings.Fields(string(b))
		if resp.StatusCode != http.StatusOK || len(f) != 4 || f[0] != method || f[1] != path || f[3] != strconv.Itoa(len(body)) {
			t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, b)
		}
		if got := resp.Header.Get("Content-Type"); got != "text/x-from" {
			t.Errorf("Content-Type %q, want the backend's", got)
		}
		if resp.ContentLength != int64(len(b)) {
			t.Errorf("Content-Length %d for a body of %d bytes", resp.ContentLength, len(b))
		}
		return f[2]
	}
	newClient := func() *http3.Transport {
		return &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.Pool}}
	}

	a, b := newClient(), newClient()
	defer b.Close()
	a1 := get(a, http.MethodGet, "/x?y=1", "")
	b1 := get(b, http.MethodGet, "/", "")
	a2 := get(a, http.MethodPost, "/upload", "twelve bytes")
	b2 := get(b, http.MethodGet, "/bytes?n=3", "")
	if a1 != a2 || b1 != b2 {
		t.Errorf("a connection's requests came over several backend connections: a %s, %s; b %s, %s", a1, a2, b1, b2)
	}
	if a1 == b1 {
		t.Errorf("two QUIC connections shared the backend connection %s", a1)
	}

	a.Close() // closes a's QUIC connection: its backend connection goes too
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		aOpen, bOpen := open[a1], open[b1]
		mu.Unlock()
		if !bOpen {
			t.Fatalf("b's backend connection closed while b is connected")
		}
		if !aOpen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's backend connection %s still open 10s after a closed its QUIC connection", a1)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A request the relay does not carry is refused, not forwarded.
	req, _ := http.NewRequest(http.MethodPut, base+"/", strings.NewReader("x"))
	resp, err := b.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT: status %d, want 400", resp.StatusCode)
	}
}

// TestRelayBadBackend: a dead backend, and one whose answer the relay
// cannot frame, get a 502 naming the reason, and no connection is kept.
func TestRelayBadBackend(t *testing.T) {
	rl := &relay{backend: "127.0.0.1:1"}
	rc := &relayConns{all: map[*relayConn]struct{}{}}
	req := httptest.NewRequestWithContext(context.WithValue(context.Background(), relayConnsKey{}, rc), http.MethodGet, "/", nil)
	rec := httptest.NewRecorder()
	rl.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadGateway {
		t.Errorf("dead backend: status %d, want 502", rec.Code)
	}

	for _, tc := range []struct{ answer, reason string }{
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "without Content-Length"},
		{"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"},
		{"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1024)
			_, _ = c.Read(buf)
			_, _ = io.WriteString(c, tc.answer)
			c.Close()
		}()
		rl.backend = ln.Addr().String()
		rec = httptest.NewRecorder()
		rl.ServeHTTP(rec, req)
		<-done
		ln.Close()
		if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), tc.reason) {
			t.Errorf("answer %q: status %d %q, want 502 naming %q", tc.answer, rec.Code, rec.Body, tc.reason)
		}
	}
	if len(rc.all) != 0 || len(rc.idle) != 0 {
		t.Errorf("a broken backend connection was kept: %d known, %d idle", len(rc.all), len(rc.idle))
	}
}
