package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/tlsmgr"
)

// TestProbe: roamgate probe --migrate against `roamgate run` in front of
// the legacy app: both requests answered, the second from a new UDP socket
// over the same upstream connection (the app's view, which the probe
// prints); an untrusted certificate, a bad URL and --help each end as
// they should.
func TestProbe(t *testing.T) {
	app := startLegacyApp(t, "legacy-app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := writeFile(t, dir, "Roamfile", "{\n\tdefault_bind 127.0.0.1\n\tdata_dir "+dataDir+"\n}\n127.0.0.1:0 {\n\treverse_proxy "+app.Addr()+"\n}\n")
	edge, stop := serving(t, []string{"run", "--config", roamfile, "--grace", "1s"})
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	waitForCertificate(t, edge, dataDir)
	_, port, _ := net.SplitHostPort(edge)
	url := "https://127.0.0.1:" + port + "/"

	var out bytes.Buffer
	if err := run(context.Background(), []string{"probe", "--migrate", "--ca", tlsmgr.RootCertPath(dataDir), "-H", "X-Client: probe", url}, &out, io.Discard); err != nil {
		t.Fatalf("probe: %v\n%s", err, out.String())
	}
	o := out.String()
	for _, want := range []string{"HTTP/3, QUIC v1, TLS 1.3", "> GET / ", "< HTTP/3.0 200 OK", "< content-type: application/json", "* migrated ", "the same QUIC connection, no new handshake"} {
		if !strings.Contains(o, want) {
			t.Fatalf("output lacks %q:\n%s", want, o)
		}
	}
	// The app's two answers: the same upstream connection, requests 1 and 2.
	var seen []legacyapp.Request
	for _, line := range strings.Split(o, "\n") {
		var r legacyapp.Request
		if json.Unmarshal([]byte(line), &r) == nil && r.Conn != 0 {
			seen = append(seen, r)
		}
	}
	if len(seen) != 2 || seen[0].Conn != seen[1].Conn || seen[1].ConnRequest != seen[0].ConnRequest+1 || seen[1].Client != "probe" {
		t.Fatalf("the app saw %+v", seen)
	}
	if strings.Count(o, "(from ") != 2 || !strings.Contains(o, "-> ") {
		t.Fatalf("no move shown:\n%s", o)
	}

	err := run(context.Background(), []string{"probe", url}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	if err := run(context.Background(), []string{"probe", "http://127.0.0.1:" + port}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "want an https:// URL") {
		t.Fatalf("http URL: %v", err)
	}
	var help bytes.Buffer
	if err := run(context.Background(), []string{"probe", "--help"}, &help, io.Discard); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "Usage: roamgate probe [flags] URL") {
		t.Fatalf("--help: %v, stdout %q", err, help.String())
	}
}
