package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
	"github.com/roamgate/roamgate/tlsmgr"
)

var connectFrom = regexp.MustCompile(`over HTTP/3 from (\S+)`)

// TestConnectThroughRoamgate runs both halves of a tunnel as a user would:
// `roamgate run` with a tunnel site in front of a TCP echo backend (an SSH
// server, say), and `roamgate connect` on the client side, across a UDP
// path that goes dead (a network change the client notices only by its
// silence). connect migrates its QUIC connection to a new socket and the
// open TCP stream carries on: no byte lost, one backend connection.
func TestConnectThroughRoamgate(t *testing.T) {
	echo := edgetest.StartBackend(t, edgetest.Echo)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := writeFile(t, dir, "Roamfile", `{
	default_bind 127.0.0.1
	data_dir `+dataDir+`
	log {
		format json
	}
}
127.0.0.1:0 {
	tunnel `+echo.Addr()+` {
		token `+connectToken+`
	}
}
`)
	edge, stopEdge := serving(t, []string{"run", "--config", roamfile, "--grace", "1s"})
	defer func() {
		if err := stopEdge(); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	waitForCertificate(t, edge, dataDir)
	relay := edgetest.NewRelay(t, edge)
	token := writeFile(t, dir, "token", connectToken+"\n")
	addr, stderr, stopConnect := connecting(t, "https://"+relay.Addr(), "--listen", "127.0.0.1:0",
		"--token-file", token, "--ca", tlsmgr.RootCertPath(dataDir), "--interval", "20ms")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	echoOnce := func(msg string) {
		t.Helper()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	echoOnce("SSH-2.0-OpenSSH_9.6\r\n")
	echoOnce(strings.Repeat("before the network change ", 1000))

	m := connectFrom.FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no client address on stderr:\n%s", stderr.String())
	}
	relay.Blackhole(netip.MustParseAddrPort(m[1])) // the old path goes silent
	waitForText(t, stderr, "migrated to ")
	echoOnce(strings.Repeat("after the network change ", 1000))

	if n := echo.Accepted(); n != 1 {
		t.Fatalf("the backend accepted %d connections, want 1", n)
	}
	if strings.Contains(stderr.String(), "reconnected") {
		t.Fatalf("connect reconnected instead of migrating:\n%s", stderr.String())
	}
	c.Close()
	if err := stopConnect(); err != nil {
		t.Fatal(err)
	}
}

// waitForCertificate polls HTTP/3 handshakes with the edge until its
// certificate, from the local CA in dataDir, is served: run opens its
// listeners before it loads certificates.
func waitForCertificate(t *testing.T, edge, dataDir string) {
	t.Helper()
	waitForCertificateNamed(t, edge, dataDir, "127.0.0.1")
}

// dialEdge opens an HTTP/3 connection to the edge at addr (127.0.0.1:P)
// once it serves its certificate from the local CA in dataDir, closed when
// the test ends.
func dialEdge(t *testing.T, addr, dataDir string) *h3client.Conn {
	t.Helper()
	waitForCertificate(t, addr, dataDir)
	pool := localRoots(t, dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// localRoots is a pool of the local CA root in dataDir.
func localRoots(t *testing.T, dataDir string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(tlsmgr.RootCertPath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

// waitForCertificateNamed is waitForCertificate for a certificate for name.
func waitForCertificateNamed(t *testing.T, edge, dataDir, name string) {
	t.Helper()
	pool := localRoots(t, dataDir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := h3client.Dial(ctx, edge, &tls.Config{RootCAs: pool, ServerName: name}, nil)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge serves no certificate: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConnectByAddressWithServerName (issue 13): connect reaches the edge
// by its IP address and names the site with --server-name, which goes in
// the TLS server name and the tunnel's :authority alike (the name alone
// in SNI got 421 from the site's router).
func TestConnectByAddressWithServerName(t *testing.T) {
	echo := edgetest.StartBackend(t, edgetest.Echo)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := writeFile(t, dir, "Roamfile", "{\n\tdefault_bind 127.0.0.1\n\tdata_dir "+dataDir+"\n}\nlocalhost:0 {\n\ttunnel "+echo.Addr()+" {\n\t\ttoken "+connectToken+"\n\t}\n}\n")
	edge, stopEdge := serving(t, []string{"run", "--config", roamfile, "--grace", "1s"})
	defer func() {
		if err := stopEdge(); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	waitForCertificateNamed(t, edge, dataDir, "localhost")
	token := writeFile(t, dir, "token", connectToken+"\n")
	addr, _, stop := connecting(t, "https://"+edge, "--listen", "127.0.0.1:0", "--token-file", token,
		"--ca", tlsmgr.RootCertPath(dataDir), "--server-name", "localhost")
	if got := roundTrip(t, addr, "hello by address"); got != "hello by address" {
		t.Fatalf("echo %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
