package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/roamgate/roamgate/proxy/h3client"
)

// wsEcho is a WebSocket echo backend (RFC 6455 over HTTP/1.1), the kind of
// notification service roamgate fronts. ended counts conversations that
// have finished.
type wsEcho struct{ ended atomic.Int64 }

func (e *wsEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer e.ended.Add(1)
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat"}})
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(context.Background())
		if err != nil {
			return
		}
		if err := c.Write(context.Background(), typ, msg); err != nil {
			return
		}
	}
}

// TestWebSocketOverHTTP1: a classic WebSocket upgrade on the TCP listener
// goes to the backend (on TCP, or on a Unix socket) on a dedicated
// connection; messages flow both ways, in order, with the subprotocol
// negotiated end to end.
func TestWebSocketOverHTTP1(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) { testWebSocketOverHTTP1(t, network) })
	}
}

func testWebSocketOverHTTP1(t *testing.T, network string) {
	echo := &wsEcho{}
	app, upstreamAddr := startAppOn(t, network, echo)
	h := startProxy(t, siteFor("", upstreamAddr), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialer := &net.Dialer{}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: h.clientTLS(),
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", h.srv.Listeners()[0].TCP[0].String())
		},
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1
	}}
	c, resp, err := websocket.Dial(ctx, "wss://localhost:"+strconv.Itoa(h.port)+"/chat", &websocket.DialOptions{
		HTTPClient: client, Subprotocols: []string{"chat"},
	})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	if c.Subprotocol() != "chat" {
		t.Fatalf("subprotocol %q", c.Subprotocol())
	}
	for i := range 20 {
		msg := "message " + strconv.Itoa(i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("read %q, %v; want %q", got, err, msg)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
	if reqs := app.Requests(); len(reqs) != 1 {
		t.Fatalf("backend saw %d requests, want the one upgrade", len(reqs))
	}
	eventually(t, "the backend's conversation to end", func() bool { return echo.ended.Load() == 1 })
}

// TestWebSocketOverHTTP3SurvivesMigration: an RFC 9220 WebSocket (extended
// CONNECT) reaches the HTTP/1.1 backend as an Upgrade on a dedicated
// connection; the client migrates mid-conversation and the conversation
// goes on: same stream, same upstream connection, every message in order.
func TestWebSocketOverHTTP3SurvivesMigration(t *testing.T) {
	echo := &wsEcho{}
	app := startApp(t, "app", echo)
	h := startProxy(t, siteFor("", app.Addr()), nil)
	h.srv.pathSample = 10 * time.Millisecond // before any session starts
	c := h.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := c.WebSocket(ctx, "https://localhost:"+strconv.Itoa(h.port)+"/chat", http.Header{"Sec-Websocket-Protocol": {"chat"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if p := ws.Response().Header.Get("Sec-Websocket-Protocol"); p != "chat" {
		t.Fatalf("subprotocol %q", p)
	}
	br := bufio.NewReader(ws)
	talk := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			msg := "message " + strconv.Itoa(i)
			if err := wsWrite(ws, opText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			op, got, err := wsRead(br)
			if err != nil || op != opText || string(got) != msg {
				t.Fatalf("message %d: op %d %q %v", i, op, got, err)
			}
		}
	}
	talk(0, 10)
	for i := 1; i <= 2; i++ {
		if err := c.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		talk(i*10, i*10+10)
		// The stream is one long request: the session's sampler sees the
		// change while it runs.
		want := float64(i)
		eventually(t, "the path change seen during the stream", func() bool { return h.pathChanges() == want })
	}

	wsWrite(ws, opClose, []byte{0x03, 0xe8}) // 1000, normal closure
	if op, _, err := wsRead(br); err != nil || op != opClose {
		t.Fatalf("close: op %d, %v", op, err)
	}
	eventually(t, "the backend's conversation to end", func() bool { return echo.ended.Load() == 1 })
	if reqs := app.Requests(); len(reqs) != 1 {
		t.Fatalf("backend saw %d requests, want the one upgrade", len(reqs))
	}
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("sessions opened = %v, want 1", got)
	}
}

// TestWebSocketRefusedByTheBackend: a backend that refuses the upgrade
// gets its answer through, on HTTP/3 too.
func TestWebSocketRefusedByTheBackend(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no websockets for you", http.StatusForbidden)
	}))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := h.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.WebSocket(ctx, "https://localhost:"+strconv.Itoa(h.port)+"/chat", nil)
	var se *h3client.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusForbidden || se.Reason != "no websockets for you" {
		t.Fatalf("err %v, want the backend's 403", err)
	}
}
