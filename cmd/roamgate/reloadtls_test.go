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
