// Package legacyapp is a small HTTP/1.1 application of the kind roamgate is
// put in front of: it keeps state per TCP connection and looks at the client
// address, as apps with connection-bound authentication or IP-keyed
// sessions do, and it reports what it sees. roamgate's demo runs it as the
// backend, and the tests use it to check that a migrating client looks, to
// the backend, like one unchanging TCP connection from one address.
package legacyapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Request is what the app saw of one request.
type Request struct {
	Conn          int    `json:"conn"`         // the TCP connection, numbered from 1 in accept order
	ConnRequest   int    `json:"conn_request"` // the request's number on its connection
	Remote        string `json:"remote"`       // the TCP peer: roamgate's upstream socket
	Local         string `json:"local"`        // the app's end of the connection
	XForwardedFor string `json:"x_forwarded_for"`
	Forwarded     string `json:"forwarded"`
	Client        string `json:"client,omitempty"` // the X-Client header, a label tests give their clients
	Method        string `json:"method"`
	Path          string `json:"path"`
	App           string `json:"app,omitempty"` // the app's name, when several run
}

// App is a running legacy app.
type App struct {
	name    string
	srv     *http.Server
	ln      net.Listener
	handler http.Handler
	done    chan struct{}
	conns   sync.Map // net.Conn -> *connState, for ConnState to report closes

	mu       sync.Mutex // guards the following
	nextConn int
	seen     []Request
	closed   []int
}

type connState struct {
	id       int
	requests int // guarded by App.mu
}

type connKey struct{}
type requestKey struct{}

// Start runs the app on addr ("127.0.0.1:0" picks a port). name labels its
// answers. h serves the requests; nil serves the default endpoints:
//
//	GET /            a JSON Request: what the app saw of this request
//	GET /events      server-sent events: ?n=5&interval=100ms
//	POST /echo       the request body back
func Start(addr, name string, h http.Handler) (*App, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("legacy app: %w", err)
	}
	return Serve(ln, name, h), nil
}

// Serve runs the app on a listener of the caller's (a Unix socket, say),
// as Start does; Close closes ln.
func Serve(ln net.Listener, name string, h http.Handler) *App {
	a := &App{name: name, ln: ln, handler: h, done: make(chan struct{})}
	if a.handler == nil {
		a.handler = defaultHandler()
	}
	a.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			a.mu.Lock()
			a.nextConn++
			cs := &connState{id: a.nextConn}
			a.mu.Unlock()
			a.conns.Store(c, cs)
			return context.WithValue(ctx, connKey{}, cs)
		},
		ConnState: a.connState,
	}
	a.srv.SetKeepAlivesEnabled(true)
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a
}

func (a *App) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	if cs, ok := a.conns.LoadAndDelete(c); ok {
		a.mu.Lock()
		a.closed = append(a.closed, cs.(*connState).id)
		a.mu.Unlock()
	}
}

func (a *App) serve(w http.ResponseWriter, r *http.Request) {
	cs := r.Context().Value(connKey{}).(*connState)
	a.mu.Lock()
	cs.requests++
	req := Request{
		Conn: cs.id, ConnRequest: cs.requests, Remote: r.RemoteAddr, Local: localAddr(r),
		XForwardedFor: r.Header.Get("X-Forwarded-For"), Forwarded: r.Header.Get("Forwarded"),
		Client: r.Header.Get("X-Client"), Method: r.Method, Path: r.URL.Path, App: a.name,
	}
	a.seen = append(a.seen, req)
	a.mu.Unlock()
	a.handler.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestKey{}, req)))
}

func localAddr(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.String()
	}
	return ""
}

// Seen returns what the app recorded of the request being served, for
// handlers given to Start.
func Seen(ctx context.Context) Request {
	req, _ := ctx.Value(requestKey{}).(Request)
	return req
}

// Addr is the app's listening address.
func (a *App) Addr() string { return a.ln.Addr().String() }

// Requests returns every request seen so far, in arrival order.
func (a *App) Requests() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Request(nil), a.seen...)
}

// ClosedConns returns the numbers of the connections that have closed.
func (a *App) ClosedConns() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]int(nil), a.closed...)
}

// Close stops the app at once and waits for it.
func (a *App) Close() error {
	err := a.srv.Close()
	<-a.done
	return err
}

func defaultHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Seen(r.Context()))
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		if n <= 0 {
			n = 5
		}
		interval, err := time.ParseDuration(r.URL.Query().Get("interval"))
		if err != nil {
			interval = 100 * time.Millisecond
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		seen := Seen(r.Context())
		for i := 1; i <= n; i++ {
			if _, err := fmt.Fprintf(w, "id: %d\ndata: event %d on connection %d\n\n", i, i, seen.Conn); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			if i < n {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(interval):
				}
			}
		}
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		if _, err := io.Copy(w, r.Body); err != nil && !errors.Is(err, io.EOF) {
			return
		}
	})
	return mux
}
