package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// unixBackend is a real HTTP/1.1 server on a Unix domain socket in a test
// directory. It counts the connections it accepted and records the Host of
// each request.
type unixBackend struct {
	path  string
	conns atomic.Int64
	mu    sync.Mutex
	hosts []string
}

func newUnixBackend(t *testing.T) *unixBackend {
	t.Helper()
	b := &unixBackend{path: filepath.Join(t.TempDir(), "app.sock")}
	ln, err := net.Listen("unix", b.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.mu.Lock()
			b.hosts = append(b.hosts, r.Host)
			b.mu.Unlock()
			_, _ = io.WriteString(w, "ok "+r.URL.Path)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				b.conns.Add(1)
			}
		},
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return b
}

func (b *unixBackend) addr() string { return UnixPrefix + b.path }

// TestUnixSocketBackend: a backend on a Unix socket carries a session's
// requests on one kept-alive connection, keeps the client's Host, and passes
// an active health check (which names localhost: a socket path is no host).
func TestUnixSocketBackend(t *testing.T) {
	b := newUnixBackend(t)
	p, _ := newPool(t, Config{Backends: []string{b.addr()}, Health: ActiveHealth{URI: "/health", Timeout: time.Second}})
	l := p.Lease(1, nil)
	defer l.Close()
	for _, path := range []string{"/a", "/b", "/c"} {
		if got := get(t, l, path); got != "ok "+path {
			t.Fatalf("GET %s = %q", path, got)
		}
	}
	if n := b.conns.Load(); n != 1 {
		t.Fatalf("backend accepted %d connections, want 1", n)
	}
	p.checkOnce(context.Background())
	if !p.Backends()[0].Healthy() {
		t.Fatal("a backend answering on its socket failed its health check")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	want := []string{"app.test", "app.test", "app.test", "localhost"}
	if !equal(b.hosts, want) {
		t.Fatalf("hosts = %q, want %q", b.hosts, want)
	}
}

// TestMissingUnixSocketIsADialError: a socket nobody listens on is an
// unreachable backend (a 502 for the client), not a hang.
func TestMissingUnixSocketIsADialError(t *testing.T) {
	addr := UnixPrefix + filepath.Join(t.TempDir(), "gone.sock")
	p, _ := newPool(t, Config{Backends: []string{addr}})
	l := p.Lease(1, nil)
	defer l.Close()
	_, err := l.RoundTrip(newReq(t, context.Background(), http.MethodGet, "/", nil, 0))
	var de *DialError
	if !errors.As(err, &de) || de.Backend != addr {
		t.Fatalf("err = %v, want a DialError for %s", err, addr)
	}
}

func TestSocketPathIsChecked(t *testing.T) {
	for _, addr := range []string{UnixPrefix, UnixPrefix + string(make([]byte, maxSocketPath+1))} {
		if _, err := New(Config{Backends: []string{addr}}, nil, nil); err == nil {
			t.Errorf("New accepted backend %q", addr)
		}
	}
}
