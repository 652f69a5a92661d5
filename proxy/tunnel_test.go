package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

// echoServer is a raw TCP echo backend (an SSH server or a database in
// real life) that records its connections.
type echoServer struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  int
	closed int
	wg     sync.WaitGroup
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns++
			e.mu.Unlock()
			e.wg.Go(func() {
				io.Copy(c, c)
				c.Close()
				e.mu.Lock()
				e.closed++
				e.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func (e *echoServer) counts() (conns, closed int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.conns, e.closed
}

// tunnelFields is an HTTP/3 CONNECT (RFC 9114 §4.4): :method and
// :authority only.
func tunnelFields(authority string, extra ...h3Field) []h3Field {
	return append([]h3Field{{":method", "CONNECT"}, {":authority", authority}}, extra...)
}

// dataFrame is one HTTP/3 DATA frame.
func dataFrame(p []byte) []byte {
	b := quicvarint.Append(nil, frameData)
	b = quicvarint.Append(b, uint64(len(p)))
	return append(b, p...)
}

// readData reads HTTP/3 frames until n bytes of DATA payload arrived.
func readData(t *testing.T, br *bufio.Reader, n int) []byte {
	t.Helper()
	var out []byte
	for len(out) < n {
		typ, err := quicvarint.Read(br)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(out), err)
		}
		l, _ := quicvarint.Read(br)
		p := make([]byte, l)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		if typ == frameData {
			out = append(out, p...)
		}
	}
	return out
}

func tunnelSite(echo, extra string) string {
	return `{
	default_bind 127.0.0.1
}
localhost:0 {
	tunnel ` + echo + ` {
		token s3cret
	}
	respond "web content"
}
` + extra
}

// TestTunnelCarriesBytes: an authenticated CONNECT is spliced to the
// configured backend; bytes flow both ways, and the client's end of stream
// reaches the backend as a FIN.
func TestTunnelCarriesBytes(t *testing.T) {
	echo := startEcho(t)
	h := startProxy(t, tunnelSite(echo.addr(), ""), nil)
	c := dialRawH3(t, h)
	str := c.sendHeaders(t, tunnelFields("localhost:"+strconv.Itoa(h.port), h3Field{"authorization", "Bearer s3cret"}))
	if status := readInterim(t, str); status != http.StatusOK {
		t.Fatalf("CONNECT: %d", status)
	}
	br := bufio.NewReader(str)
	for _, msg := range []string{"SSH-2.0-roamgate-test\r\n", "more bytes", "and more"} {
		str.Write(dataFrame([]byte(msg)))
		if got := string(readData(t, br, len(msg))); got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	str.Close() // FIN: the backend sees EOF and closes
	eventually(t, "the backend to see the end", func() bool { _, closed := echo.counts(); return closed == 1 })
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the backend closed: %v, want EOF", err)
	}
	if conns, _ := echo.counts(); conns != 1 {
		t.Fatalf("backend saw %d connections", conns)
	}
}

// TestTunnelRefusals: roamgate is never an open proxy. A CONNECT without a
// token or with a wrong one, to a site without a tunnel, to a host no site
// serves, or with an unknown :protocol, is refused with the right status,
// and the backend sees nothing.
func TestTunnelRefusals(t *testing.T) {
	echo := startEcho(t)
	h := startProxy(t, tunnelSite(echo.addr(), `plain.localhost:0 {
	respond "no tunnel here"
}
`), nil)
	c := dialRawH3(t, h)
	port := strconv.Itoa(h.port)
	for _, tc := range []struct {
		name   string
		fields []h3Field
		want   int
	}{
		{"no token", tunnelFields("localhost:" + port), http.StatusUnauthorized},
		{"wrong token", tunnelFields("localhost:"+port, h3Field{"authorization", "Bearer guess"}), http.StatusUnauthorized},
		{"token prefix", tunnelFields("localhost:"+port, h3Field{"authorization", "Bearer s3cre"}), http.StatusUnauthorized},
		{"basic auth", tunnelFields("localhost:"+port, h3Field{"authorization", "Basic czNjcmV0"}), http.StatusUnauthorized},
		{"site without a tunnel", tunnelFields("plain.localhost:"+port, h3Field{"authorization", "Bearer s3cret"}), http.StatusMethodNotAllowed},
		{"another target", tunnelFields("evil.test:22", h3Field{"authorization", "Bearer s3cret"}), http.StatusMisdirectedRequest},
		{"unknown :protocol", []h3Field{{":method", "CONNECT"}, {":protocol", "connect-udp"}, {":scheme", "https"}, {":authority", "localhost:" + port}, {":path", "/"}}, http.StatusNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			str := c.sendHeaders(t, tc.fields)
			str.Close()
			if got := readH3Status(t, str); got.status != tc.want {
				t.Fatalf("got %v, want %d", got, tc.want)
			}
		})
	}
	if conns, _ := echo.counts(); conns != 0 {
		t.Fatalf("the backend got %d connections", conns)
	}
	if len(h.logged("tunnel refused: no client certificate or valid token")) != 4 {
		t.Fatalf("refusals logged: %d", len(h.logged("tunnel refused: no client certificate or valid token")))
	}
}

// TestTunnelEndsWithTheSession: when the client's QUIC connection closes,
// its tunnels' backend connections close too.
func TestTunnelEndsWithTheSession(t *testing.T) {
	echo := startEcho(t)
	h := startProxy(t, tunnelSite(echo.addr(), ""), nil)
	c := dialRawH3(t, h)
	str := c.sendHeaders(t, tunnelFields("localhost:"+strconv.Itoa(h.port), h3Field{"authorization", "bearer s3cret"}))
	if status := readInterim(t, str); status != http.StatusOK {
		t.Fatalf("CONNECT: %d", status)
	}
	str.Write(dataFrame([]byte("x")))
	readData(t, bufio.NewReader(str), 1)
	c.conn.CloseWithError(quic.ApplicationErrorCode(0), "")
	eventually(t, "the backend connection to close", func() bool { _, closed := echo.counts(); return closed == 1 })
}

// TestTunnelSurvivesNetworkChanges: a tunnel opened by roamgate connect's
// client code carries a byte stream through a NAT that rebinds, then
// through an active migration: every byte arrives, in order, and the
// backend sees one TCP connection throughout.
func TestTunnelSurvivesNetworkChanges(t *testing.T) {
	echo := startEcho(t)
	h := startProxy(t, tunnelSite(echo.addr(), ""), nil)
	relay := startRelay(t, h.addr, impair.Faults{})
	c := h.dialTo(t, relay.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tun, err := c.Tunnel(ctx, "localhost:"+strconv.Itoa(h.port), http.Header{"Authorization": {"Bearer s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	var sent, got bytes.Buffer
	round := func(n int) {
		t.Helper()
		msg := bytes.Repeat([]byte{byte('a' + n%26)}, 10_000+n)
		sent.Write(msg)
		if _, err := tun.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(tun, buf); err != nil {
			t.Fatalf("round %d: %v", n, err)
		}
		got.Write(buf)
	}
	for n := range 3 {
		round(n)
	}
	if err := relay.Rebind(); err != nil {
		t.Fatal(err)
	}
	for n := 3; n < 6; n++ {
		round(n)
	}
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for n := 6; n < 9; n++ {
		round(n)
	}
	if !bytes.Equal(sent.Bytes(), got.Bytes()) {
		t.Fatal("the stream came back changed")
	}
	if conns, _ := echo.counts(); conns != 1 {
		t.Fatalf("the backend saw %d connections, want 1", conns)
	}
	tun.CloseWrite()
	if rest, err := io.ReadAll(tun); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	eventually(t, "the backend connection to close", func() bool { _, closed := echo.counts(); return closed == 1 })
	c.Close()
	eventually(t, "the session to end", func() bool { return testutilCounter(h.srv.metrics.sessionsActive) == 0 })
}

// TestTunnelBackendClosesFirst: a backend that sends its greeting and hangs
// up ends the stream for the client (the FIN passes on), and the session
// lives on for other streams.
func TestTunnelBackendClosesFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "220 banner, bye\r\n")
			c.Close()
		}
	})
	h := startProxy(t, tunnelSite(ln.Addr().String(), ""), nil)
	c := h.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		tun, err := c.Tunnel(ctx, "localhost:"+strconv.Itoa(h.port), http.Header{"Authorization": {"Bearer s3cret"}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(tun)
		if err != nil || string(got) != "220 banner, bye\r\n" {
			t.Fatalf("read %q, %v", got, err)
		}
		tun.Close()
	}
	if got := h.sessionsOpened("h3"); got != 1 {
		t.Fatalf("sessions opened = %v, want 1", got)
	}
}

// TestReloadKeepsATunnel (issue 14): a reload that moves the tunnel to
// another backend, and then one that removes it, leave an open tunnel
// carrying bytes to its backend, over its TCP connection, until it ends;
// new CONNECTs follow the configuration: to the new backend, then refused.
func TestReloadKeepsATunnel(t *testing.T) {
	first, second := startEcho(t), startEcho(t)
	h := startProxy(t, tunnelSite(first.addr(), ""), nil)
	authority := "localhost:" + strconv.Itoa(h.port)
	connect := func(c *rawH3Conn) (*quic.Stream, int) {
		str := c.sendHeaders(t, tunnelFields(authority, h3Field{"authorization", "Bearer s3cret"}))
		return str, readInterim(t, str)
	}
	echoes := func(str *quic.Stream, br *bufio.Reader, msg string) {
		t.Helper()
		str.Write(dataFrame([]byte(msg)))
		if got := string(readData(t, br, len(msg))); got != msg {
			t.Fatalf("echo %q, want %q", got, msg)
		}
	}
	c := dialRawH3(t, h)
	open, status := connect(c)
	if status != http.StatusOK {
		t.Fatalf("CONNECT: %d", status)
	}
	br := bufio.NewReader(open)
	echoes(open, br, "before the reloads")

	// The tunnel moves to another backend: the open one stays on its own.
	if err := h.srv.Reload(mustParse(t, tunnelSite(second.addr(), ""))); err != nil {
		t.Fatal(err)
	}
	echoes(open, br, "after the tunnel moved")
	moved, status := connect(dialRawH3(t, h))
	if status != http.StatusOK {
		t.Fatalf("CONNECT after the move: %d", status)
	}
	echoes(moved, bufio.NewReader(moved), "to the new backend")
	if conns, _ := second.counts(); conns != 1 {
		t.Fatalf("the new backend saw %d connections, want 1", conns)
	}

	// The tunnel removed: the open one still carries bytes; a new CONNECT
	// is refused.
	noTunnel := "{\n\tdefault_bind 127.0.0.1\n}\nlocalhost:0 {\n\trespond \"web content\"\n}\n"
	if err := h.srv.Reload(mustParse(t, noTunnel)); err != nil {
		t.Fatal(err)
	}
	echoes(open, br, "after the tunnel was removed")
	refused := dialRawH3(t, h).sendHeaders(t, tunnelFields(authority, h3Field{"authorization", "Bearer s3cret"}))
	refused.Close()
	if got := readH3Status(t, refused); got.status != http.StatusMethodNotAllowed {
		t.Fatalf("a CONNECT after the reload removed the tunnel: %v, want 405", got)
	}
	if conns, closed := first.counts(); conns != 1 || closed != 0 {
		t.Fatalf("the first backend saw %d connections, %d closed: the open tunnel's must be the only one, open", conns, closed)
	}
	open.Close()
	eventually(t, "the open tunnel's backend to see its end", func() bool { _, closed := first.counts(); return closed == 1 })
}
