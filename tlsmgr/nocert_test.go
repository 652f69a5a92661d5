package tlsmgr

import (
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// helloFor is a ClientHello for serverName from 192.0.2.1 (certmagic logs
// the remote address).
func helloFor(serverName string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{ServerName: serverName, Conn: remoteConn{remote: "192.0.2.1:4433"}}
}

// remoteConn is a net.Conn with addresses only.
type remoteConn struct {
	net.Conn
	remote string
}

func (c remoteConn) RemoteAddr() net.Addr { return addrString(c.remote) }
func (c remoteConn) LocalAddr() net.Addr  { return addrString("127.0.0.1:443") }

const (
	msgNoSite    = "tls handshake for a name no site serves"
	msgNotLoaded = "tls handshake for a name whose certificate is not loaded yet"
)

// TestNoCertificateIsLogged is a regression test (issue 13): a handshake
// with SNI "localhost" to a proxy that serves only 127.0.0.1 got an
// internal_error alert and logged nothing at info. It is logged once per
// name, with the served names; a flood of random names is held to the
// line budget and the remembered names to their bound, and the next line
// says how many went unlogged.
func TestNoCertificateIsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	m, err := New(Config{
		DataDir: t.TempDir(),
		Sites:   []Site{{Names: []string{"127.0.0.1", "*.svc.internal"}, Issuer: IssuerLocal}},
	}, acmetest.Logger(t, zap.ErrorLevel, core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, m.TLSConfig())
	for range 3 {
		_, err := handshake(t, addr, &tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
		if err == nil || !strings.Contains(err.Error(), "internal error") {
			t.Fatalf("handshake for localhost: %v, want an internal error alert", err)
		}
	}
	lines := logs.FilterMessage(msgNoSite).All()
	if len(lines) != 1 {
		t.Fatalf("%d lines for three handshakes with one name, want 1: %v", len(lines), lines)
	}
	f := lines[0].ContextMap()
	if f["server_name"] != "localhost" || !strings.HasPrefix(f["remote"].(string), "127.0.0.1:") {
		t.Fatalf("line %v", f)
	}
	if served, _ := f["served"].([]any); len(served) != 2 || served[0] != "*.svc.internal" || served[1] != "127.0.0.1" {
		t.Fatalf("served %v, want [*.svc.internal 127.0.0.1]", f["served"])
	}

	// A flood on a stopped clock: the burst's lines, then none.
	now := time.Now()
	m.noCert.now = func() time.Time { return now }
	const flood = 5000
	for i := range flood {
		if _, err := m.getCertificate(helloFor("r" + strconv.Itoa(i) + ".example")); err == nil {
			t.Fatal("a certificate for a random name")
		}
	}
	if n := logs.FilterMessage(msgNoSite).Len(); n != noCertBurst {
		t.Fatalf("%d lines after a flood of %d names, want the burst of %d", n, flood, noCertBurst)
	}
	m.noCert.mu.Lock()
	remembered, suppressed := len(m.noCert.seen), m.noCert.suppressed
	m.noCert.mu.Unlock()
	if remembered > noCertNames || suppressed != flood-(noCertBurst-1) {
		t.Fatalf("remembered %d names (at most %d), suppressed %d (want %d)", remembered, noCertNames, suppressed, flood-(noCertBurst-1))
	}
	// A second later one line is free again, and counts the rest.
	now = now.Add(time.Second)
	_, _ = m.getCertificate(helloFor("after.example"))
	last := logs.FilterMessage(msgNoSite).All()
	if f := last[len(last)-1].ContextMap(); f["server_name"] != "after.example" || f["suppressed"] != int64(suppressed) {
		t.Fatalf("line after the flood: %v, want after.example with suppressed %d", f, suppressed)
	}
	// A served name's handshakes never log.
	if _, err := m.getCertificate(helloFor("api.svc.internal")); err != nil {
		t.Fatalf("served wildcard name: %v", err)
	}
	if n := logs.FilterMessage(msgNotLoaded).Len(); n != 0 {
		t.Fatalf("%d not-loaded lines for loaded names", n)
	}
}

// TestNoCertificateYetIsLogged: a handshake for a name a site lists, before
// its certificate is loaded, says so rather than that no site serves it.
func TestNoCertificateYetIsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	m, err := New(Config{DataDir: t.TempDir(), Sites: []Site{{Names: []string{"app.internal"}}}}, acmetest.Logger(t, zap.ErrorLevel, core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if _, err := m.getCertificate(helloFor("App.Internal")); err == nil {
		t.Fatal("a certificate before Start")
	}
	if lines := logs.FilterMessage(msgNotLoaded).All(); len(lines) != 1 || lines[0].ContextMap()["server_name"] != "app.internal" {
		t.Fatalf("lines %v", logs.All())
	}
}
