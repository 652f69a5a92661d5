package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/tlsmgr"
)

// TestReloadTLSAndLogLevel (issue 14): a reload that adds a site gets its
// name a certificate, one that removes it stops serving the name, and the
// log level changes in place; a change of the log's output is refused with
// its reason, the running configuration untouched.
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
		pem, err := os.ReadFile(tlsmgr.RootCertPath(dataDir))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
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

	// A change of the log's output: refused, the new site serves on.
	os.WriteFile(f, []byte(strings.Replace(roamfile("debug", other), "format json", "format console", 1)), 0o600)
	if err := reload(); err == nil || !strings.Contains(err.Error(), "needs a restart") {
		t.Fatalf("a log format change: %v", err)
	}
	if err := handshake("localhost"); err != nil {
		t.Fatalf("after the refused reload: %v", err)
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
