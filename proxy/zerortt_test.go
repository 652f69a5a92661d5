package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	quicproxy "github.com/quic-go/quic-go/integrationtests/tools/proxy"
)

// TestZeroRTT: a resumed client's request sent in 0-RTT data reaches the
// backend marked Early-Data: 1 when its method is safe; a POST sent in
// 0-RTT gets 425 Too Early and the backend sees nothing (a replayed flight
// can never repeat it); the same POST after the handshake goes through
// (RFC 8470).
func TestZeroRTT(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	tlsConf := h.clientTLS()
	tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	url := "https://localhost:" + strconv.Itoa(h.port) + "/"

	// A first connection leaves a session ticket that allows 0-RTT.
	first := h.dialWith(t, h.addr, tlsConf)
	if resp, _ := do(t, first, "GET", url, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("first connection: %d", resp.StatusCode)
	}
	first.Close()

	// Packets take 10 ms each way, so requests in the first flight are
	// handled before the client's handshake Finished arrives: they are
	// early on the server, deterministically.
	relay := delayingRelay(t, h.addr, 10*time.Millisecond)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	early := tlsConf.Clone()
	early.NextProtos = []string{http3.NextProtoH3}
	conn, err := tr.DialEarly(ctx, relay, early, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(conn)

	// Both requests go out in 0-RTT data, before the handshake completes.
	// quic-go's client holds unsafe methods until the handshake is done;
	// written raw, the POST goes out in the 0-RTT flight.
	postStream := (&rawH3Conn{conn: conn}).send(t, postFields(h, h3Field{"content-length", "5"}), []byte("pay=1"))
	if postStream == nil {
		t.Fatal("the early POST stream was reset")
	}
	get, _ := http.NewRequestWithContext(ctx, http3.MethodGet0RTT, url, nil)
	getResp, err := cc.RoundTrip(get)
	if err != nil {
		t.Fatal(err)
	}
	post := readH3Status(t, postStream)
	if !conn.ConnectionState().Used0RTT {
		t.Fatal("the connection did not use 0-RTT")
	}

	body, _ := io.ReadAll(getResp.Body)
	getResp.Body.Close()
	e := decodeEcho(t, string(body))
	if getResp.StatusCode != http.StatusOK || e.Header.Get("Early-Data") != "1" {
		t.Fatalf("early GET: %d, backend saw Early-Data %q", getResp.StatusCode, e.Header.Get("Early-Data"))
	}
	if post.status != http.StatusTooEarly {
		t.Fatalf("early POST: %v, want 425", post)
	}
	for _, r := range app.Requests() {
		if r.Method == http.MethodPost {
			t.Fatal("the backend saw the early POST")
		}
	}

	<-conn.HandshakeComplete()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("pay=1"))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	e = decodeEcho(t, string(body))
	if resp.StatusCode != http.StatusOK || e.Body != "pay=1" || e.Header.Get("Early-Data") != "" {
		t.Fatalf("POST after the handshake: %d %+v", resp.StatusCode, e)
	}
	if got := testutilCounter(h.srv.metrics.tooEarly); got != 1 {
		t.Fatalf("too_early_total = %v, want 1", got)
	}
	// Close before the relay goes away, so shutdown need not wait for a
	// client it cannot hear from.
	conn.CloseWithError(0, "")
	eventually(t, "the sessions to end", func() bool { return testutilCounter(h.srv.metrics.sessionsActive) == 0 })
}

// delayingRelay forwards UDP to server with each packet delayed by d.
func delayingRelay(t *testing.T, server string, d time.Duration) *net.UDPAddr {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &quicproxy.Proxy{
		Conn:        udp,
		ServerAddr:  sa,
		DelayPacket: func(quicproxy.Direction, net.Addr, net.Addr, []byte) time.Duration { return d },
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		udp.Close() // the proxy does not close a socket it was given
	})
	return p.LocalAddr().(*net.UDPAddr)
}
