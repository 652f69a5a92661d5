package h3client

import (
	"context"
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// TestDialClientCertificate: Dial returns only once the edge accepted the
// handshake. In TLS 1.3 the server checks a client certificate after the
// client's side of the handshake is done, so without Dial's confirmation a
// refused certificate would show as a connection that dies right after a
// successful Dial.
func TestDialClientCertificate(t *testing.T) {
	client := edgetest.NewCert(t, "client")
	e := edgetest.Start(t, edgetest.Options{Token: testToken, ClientCAs: client.Pool})
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	_, err := Dial(ctx, e.Addr, e.ClientTLS(), nil)
	if err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("dial without a client certificate: %v", err)
	}

	conf := e.ClientTLS()
	conf.Certificates = []tls.Certificate{client.TLS}
	c, err := Dial(ctx, e.Addr, conf, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, openTunnel(t, c, echoAuthority), "mutual")
}

// TestDialBindsLoopback: a connection to a loopback edge uses a socket on
// the loopback address of its family, which LocalAddr reports.
func TestDialBindsLoopback(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{})
	c := dial(t, e.Addr, e)
	if got := c.LocalAddrPort(); got.Addr() != netip.MustParseAddr("127.0.0.1") || got.Port() == 0 {
		t.Fatalf("local address %s", got)
	}
	if c.RemoteAddr().String() != e.Addr {
		t.Fatalf("remote %s, want %s", c.RemoteAddr(), e.Addr)
	}
}
