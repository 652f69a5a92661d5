package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/quicvarint"
)

// TestExpectContinueOverHTTP3: a client that asks for 100 Continue before
// sending its body gets it, sends the body, and the backend gets it all.
func TestExpectContinueOverHTTP3(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	c := dialRawH3(t, h)
	str := c.sendHeaders(t, postFields(h, h3Field{"content-length", "5"}, h3Field{"expect", "100-continue"}))
	if status := readInterim(t, str); status != http.StatusContinue {
		t.Fatalf("interim status %d, want 100", status)
	}
	b := quicvarint.Append(nil, frameData)
	b = quicvarint.Append(b, 5)
	str.Write(append(b, "hello"...))
	str.Close()
	if got := readH3Status(t, str); got.status != http.StatusOK {
		t.Fatalf("final status %v", got)
	}
	if reqs := app.Requests(); len(reqs) != 1 || reqs[0].Method != http.MethodPost {
		t.Fatalf("backend got %+v", reqs)
	}
}

// TestExpectContinueOverHTTP1: the same over HTTP/1.1.
func TestExpectContinueOverHTTP1(t *testing.T) {
	app := startApp(t, "app", http.HandlerFunc(headerEcho))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	conn, err := tls.Dial("tcp", h.srv.Listeners()[0].TCP[0].String(), h.clientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(conn)
	line, _ := br.ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line %q, want a 100 Continue", line)
	}
	br.ReadString('\n') // the interim response's empty line
	io.WriteString(conn, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if e := decodeEcho(t, string(body)); resp.StatusCode != http.StatusOK || e.Body != "hello" || e.Header.Get("Expect") != "" {
		t.Fatalf("%d %+v", resp.StatusCode, e)
	}
}

// TestZeroRTTOff: "zero_rtt off" keeps early data out.
func TestZeroRTTOff(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, "{\n\tdefault_bind 127.0.0.1\n\tzero_rtt off\n}\nlocalhost:0 {\n\treverse_proxy "+app.Addr()+"\n}\n", nil)
	if h.srv.quicConf.Allow0RTT {
		t.Fatal("0-RTT allowed with zero_rtt off")
	}
	tlsConf := h.clientTLS()
	tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	first := h.dialWith(t, h.addr, tlsConf)
	if resp, _ := do(t, first, "GET", "https://localhost:"+strconv.Itoa(h.port)+"/", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.StatusCode)
	}
	first.Close()
	second := h.dialWith(t, h.addr, tlsConf)
	if second.QUIC().ConnectionState().Used0RTT {
		t.Fatal("a resumed connection used 0-RTT")
	}
}
