package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
	"github.com/roamgate/roamgate/tlsmgr/acmetest"
)

// TestReloadTLSAndLogLevel (issue 14): a reload that adds a site gets its
// name a certificate, one that removes it stops serving the name, and the
// log settings (level, format, output) change in place; a log file that
// cannot be opened refuses the reload, the running configuration
// untouched.
func TestReloadTLSAndLogLevel(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := func(level, extra string) string {
		return "{\n\tdefault_bind 127.0.0.1\n\tdata_dir " + dataDir + "\n\tlog {\n\t\tlevel " + level + "\n\t\tformat json\n\t}\n}\n" +
			"127.0.0.1:0 {\n\treverse_proxy " + app.Addr() + "\n}\n" + extra
	}
	other := "localhost:0 {\n\trespond \"the other site\"\n}\n"
	f := writeFile(t, dir, "Roamfile", roamfile("info", ""))
	addr, logs, stop := servingLogs(t, []string{"run", "--config", f})
	defer stop()
	waitForCertificate(t, addr, dataDir)
	handshake := func(name string) error {
		pool := localRoots(t, dataDir)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := h3client.Dial(ctx, addr, &tls.Config{RootCAs: pool, ServerName: name}, nil)
		if err == nil {
			c.Close()
		}
		return err
	}
	reload := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard)
	}
	if err := handshake("localhost"); err == nil {
		t.Fatal("a handshake for localhost before any site names it")
	}

	// A new site, and the debug level.
	os.WriteFile(f, []byte(roamfile("debug", other)), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if err := handshake("localhost"); err != nil {
		t.Fatalf("the new site's name after the reload: %v", err)
	}
	// A connection: its session is logged at debug.
	c := dialEdge(t, addr, dataDir)
	getOver(t, c, addr)
	if !strings.Contains(logs.String(), `"session opened"`) {
		t.Fatal("no debug line after the level became debug")
	}

	// A log output that cannot be opened: refused with its place, the
	// new site serves on.
	bad := strings.Replace(roamfile("debug", other), "format json", "format json\n\t\toutput file "+filepath.Join(dir, "no", "such", "dir", "log"), 1)
	os.WriteFile(f, []byte(bad), 0o600)
	if err := reload(); err == nil || !strings.Contains(err.Error(), "output file") {
		t.Fatalf("a log output that cannot be opened: %v", err)
	}
	if err := handshake("localhost"); err != nil {
		t.Fatalf("after the refused reload: %v", err)
	}
	// Another format and a file: the next lines go there, as console.
	logFile := filepath.Join(dir, "roamgate.log")
	moved := strings.Replace(roamfile("debug", other), "format json", "format console\n\t\toutput file "+logFile, 1)
	os.WriteFile(f, []byte(moved), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("a log output change: %v", err)
	}
	getOver(t, dialEdge(t, addr, dataDir), addr)
	eventually(t, "console lines in the new log file", func() bool {
		b, _ := os.ReadFile(logFile)
		// Console lines, no JSON ones ({"level":"info",...}).
		return strings.Contains(string(b), "\tDEBUG\t") && !strings.Contains(string(b), `{"level":"`)
	})
	os.WriteFile(f, []byte(roamfile("debug", other)), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("back to the first log settings: %v", err)
	}

	// The site removed: its name is served no more; back to info.
	os.WriteFile(f, []byte(roamfile("info", "")), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if err := handshake("localhost"); err == nil {
		t.Fatal("a handshake for the removed site's name")
	}
	if err := handshake("127.0.0.1"); err != nil {
		t.Fatalf("the remaining site: %v", err)
	}
	mark := len(logs.String())
	getOver(t, dialEdge(t, addr, dataDir), addr)
	if strings.Contains(logs.String()[mark:], `"session opened"`) {
		t.Fatal("a debug line after the level went back to info")
	}
}

// getOver does a GET of / over c and fails the test unless it is a 200.
func getOver(t *testing.T, c *h3client.Conn, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadAddsTheFirstACMESite: a server started without ACME has no
// plain-HTTP port; the reload that adds its first ACME site opens it
// before the certificate manager learns of the site, so the name's
// certificate comes from the CA by HTTP-01 on that port (the test's CA
// cannot validate TLS-ALPN-01 here), and plain HTTP is redirected. A reload
// that adds one and fails later closes the port again.
func TestReloadAddsTheFirstACMESite(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	ca := acmetest.New(t)
	httpPort := edgetest.FreePort(t)
	ca.Serve(t, acmetest.Options{HTTPPort: httpPort}) // no TLS-ALPN-01 port
	roamfile := func(extra string) string {
		return "{\n\tdefault_bind 127.0.0.1\n\tdata_dir " + dataDir + "\n\thttp_port " + strconv.Itoa(httpPort) +
			"\n\temail ops@example.com\n\tacme_ca " + ca.DirectoryURL() + "\n\tacme_ca_root " + ca.ClientRootsFile(t) + "\n}\n" +
			"127.0.0.1:0 {\n\treverse_proxy " + app.Addr() + "\n}\n" + extra
	}
	shop := "shop.example.com:0 {\n\trespond \"shop\"\n}\n"
	f := writeFile(t, dir, "Roamfile", roamfile(""))
	addr, logs, stop := servingLogs(t, []string{"run", "--config", f})
	defer stop()
	waitForCertificate(t, addr, dataDir)
	reload := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard)
	}
	httpOpen := func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	if httpOpen() {
		t.Fatal("the HTTP port listens with no ACME site")
	}

	// The ACME site and a port in use: refused whole, the HTTP port
	// closed again.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := "127.0.0.1:" + strconv.Itoa(busy.Addr().(*net.TCPAddr).Port) + " {\n\trespond \"busy\"\n}\n"
	os.WriteFile(f, []byte(roamfile(shop+inUse)), 0o600)
	if err := reload(); err == nil {
		t.Fatal("a reload onto a port in use")
	}
	if httpOpen() {
		t.Fatal("the refused reload left the HTTP port open")
	}
	if n := ca.Orders("shop.example.com"); n != 0 {
		t.Fatalf("the refused reload ordered a certificate (%d orders)", n)
	}

	// The ACME site alone: the HTTP port opens, the certificate comes.
	os.WriteFile(f, []byte(roamfile(shop)), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("reload adding the ACME site: %v\n%s", err, logs.String())
	}
	if !httpOpen() {
		t.Fatal("no HTTP port after the reload added an ACME site")
	}
	client := &http.Client{
		Timeout:       5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+strconv.Itoa(httpPort)+"/cart?x=1", nil)
	req.Host = "shop.example.com"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	_, port, _ := net.SplitHostPort(addr)
	if want := "https://shop.example.com:" + port + "/cart?x=1"; resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
		t.Fatalf("plain HTTP: %d %q, want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.IssuingRoots(), ServerName: "shop.example.com"})
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate from the CA for the new site: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// (Two orders when the first tried TLS-ALPN-01, which this CA cannot
	// validate.)
	t.Logf("certificate after %d orders", ca.Orders("shop.example.com"))

	// The ACME site removed again: the port stays (until a restart), and
	// a later reload is not refused for it.
	os.WriteFile(f, []byte(roamfile("")), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("reload removing the ACME site: %v", err)
	}
	os.WriteFile(f, []byte(roamfile(shop)), 0o600)
	if err := reload(); err != nil {
		t.Fatalf("reload adding it back: %v", err)
	}
}
