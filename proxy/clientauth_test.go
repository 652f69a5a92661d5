package proxy

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

// TestTunnelWithClientCertificates: a tunnel site with client_auth lets in
// a client with a certificate from its CA, refuses a handshake without
// one, and refuses a request that reaches it through another site's
// handshake (a different server name, or a certificate of another CA).
func TestTunnelWithClientCertificates(t *testing.T) {
	echo := startEcho(t)
	ours, theirs := tlstest.NewCA(t, t.TempDir(), "ours"), tlstest.NewCA(t, t.TempDir(), "theirs")
	h := startProxy(t, `{
	default_bind 127.0.0.1
}
mtls.localhost:0 {
	tls internal {
		client_auth {
			trusted_ca_cert_file `+ours.File+`
		}
	}
	tunnel `+echo.addr()+`
	respond "members only"
}
other.localhost:0 {
	tls internal {
		client_auth {
			trusted_ca_cert_file `+theirs.File+`
		}
	}
	respond "other"
}
open.localhost:0 {
	respond "open"
}
`, nil)
	port := strconv.Itoa(h.port)
	withCert := func(sni string, cert *tls.Certificate) *tls.Config {
		c := h.clientTLS()
		c.ServerName = sni
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c
	}
	good := ours.IssueClient(t, "laptop")
	c, err := dialRawH3With(t, h, withCert("mtls.localhost", &good))
	if err != nil {
		t.Fatalf("handshake with a good certificate: %v", err)
	}
	str := c.sendHeaders(t, tunnelFields("mtls.localhost:"+port))
	if status := readInterim(t, str); status != http.StatusOK {
		t.Fatalf("CONNECT with a client certificate: %d", status)
	}
	str.Write(dataFrame([]byte("ping")))
	if got := string(readData(t, bufio.NewReader(str), 4)); got != "ping" {
		t.Fatalf("echo %q", got)
	}
	str.Close()

	// In TLS 1.3 the client finishes its handshake before the server has
	// checked its certificate: a refusal closes the connection right after.
	refused := func(cfg *tls.Config) bool {
		c, err := dialRawH3With(t, h, cfg)
		if err != nil {
			return true
		}
		select {
		case <-c.conn.Context().Done():
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	if !refused(withCert("mtls.localhost", nil)) {
		t.Fatal("a handshake without a client certificate was accepted")
	}
	foreign := theirs.IssueClient(t, "intruder")
	if !refused(withCert("mtls.localhost", &foreign)) {
		t.Fatal("a handshake with another CA's certificate was accepted")
	}
	// Through the open site's handshake (no certificate asked), then
	// naming mtls.localhost: refused per request.
	c, err = dialRawH3With(t, h, withCert("open.localhost", nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, fields := range [][]h3Field{
		tunnelFields("mtls.localhost:" + port),
		{{":method", "GET"}, {":scheme", "https"}, {":authority", "mtls.localhost:" + port}, {":path", "/"}},
	} {
		s := c.sendHeaders(t, fields)
		s.Close()
		if got := readH3Status(t, s); got.status != http.StatusForbidden {
			t.Fatalf("%s through another site's handshake: %v, want 403", fields[0].value, got)
		}
	}
	// Through the other client-auth site's handshake, with its CA's
	// certificate: still not ours.
	c, err = dialRawH3With(t, h, withCert("other.localhost", &foreign))
	if err != nil {
		t.Fatal(err)
	}
	s := c.sendHeaders(t, tunnelFields("mtls.localhost:"+port))
	s.Close()
	if got := readH3Status(t, s); got.status != http.StatusForbidden {
		t.Fatalf("CONNECT with another site's certificate: %v, want 403", got)
	}
	if conns, _ := echo.counts(); conns != 1 {
		t.Fatalf("the backend got %d connections, want 1", conns)
	}
}
