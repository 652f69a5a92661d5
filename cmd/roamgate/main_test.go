package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/tlsmgr/acmetest"
	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

func TestMain(m *testing.M) {
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	opts := append([]goleak.Option{goleak.Cleanup(func(int) {
		if builtDir != "" {
			os.RemoveAll(builtDir) // TestUpgradeUnderLoad's binaries
		}
	})}, acmetest.IgnoreCertmagicGoroutines...)
	goleak.VerifyTestMain(m, opts...)
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"run", "--nope"}, {"validate", "extra"}, {"reverse-proxy", "--from", ":0"}} {
		var out, errOut bytes.Buffer
		if err := run(context.Background(), args, &out, &errOut); !errors.Is(err, errUsage) {
			t.Errorf("%v: err = %v, want usage error", args, err)
		}
		if errOut.Len() == 0 {
			t.Errorf("%v: nothing on stderr", args)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "roamgate ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "Roamfile", "localhost:8443 {\n\treverse_proxy 127.0.0.1:9000\n}\n")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"validate", "--config", good}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "valid (1 site; data directory ") {
		t.Fatalf("stdout %q", out.String())
	}

	// A data directory that cannot be one is an error, named with where
	// it came from.
	file := writeFile(t, dir, "file", "")
	err := run(context.Background(), []string{"validate", "--config", good, "--data-dir", filepath.Join(file, "sub")}, io.Discard, io.Discard)
	if want := "data directory " + filepath.Join(file, "sub") + " (--data-dir): " + file + " is not a directory"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("data dir under a file: %v, want %q", err, want)
	}

	bad := writeFile(t, dir, "Bad", "localhost:8443 {\n\treverse_proxy 127.0.0.1:9000 {\n\t\tmax_con 4\n\t}\n\ttls missing.pem missing.key\n}\n")
	err = run(context.Background(), []string{"validate", "--config", bad}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("a bad Roamfile validated")
	}
	want := bad + `:3:3: reverse_proxy: unknown subdirective "max_con" (did you mean max_conns_per_session?)`
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q, want it to contain %q", err, want)
	}

	wild := writeFile(t, dir, "Wild", "*.example.com {\n\treverse_proxy 127.0.0.1:9000\n}\n")
	err = run(context.Background(), []string{"validate", "--config", wild}, io.Discard, io.Discard)
	if want := wild + `:1:1: tls: name "*.example.com": wildcard certificates need the DNS challenge`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("public wildcard: %v, want %q", err, want)
	}

	upstreamCA := writeFile(t, dir, "UpstreamCA", "localhost:8443 {\n\treverse_proxy https://127.0.0.1:9443 {\n\t\ttls_ca missing-ca.pem\n\t}\n}\n")
	err = run(context.Background(), []string{"validate", "--config", upstreamCA}, io.Discard, io.Discard)
	if want := upstreamCA + `:3:10: reverse_proxy: tls_ca: "missing-ca.pem": no such file or directory`; err == nil || err.Error() != want {
		t.Fatalf("missing upstream CA file: %v, want %q", err, want)
	}

	files := writeFile(t, dir, "Files", "localhost:8443 {\n\treverse_proxy 127.0.0.1:9000\n\ttls missing.pem missing.key\n}\n")
	err = run(context.Background(), []string{"validate", "--config", files}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), files+":3:2: tls: ") || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("missing cert files: %v", err)
	}
}

// TestDemo runs the README's first command, exiting after its client.
func TestDemo(t *testing.T) {
	var out syncBuffer
	err := run(context.Background(), []string{"demo", "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--once"}, &out, io.Discard)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"migrate  127.0.0.1:", "The app saw one TCP connection (#1)", "roamgate serves https://localhost:"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

var listeningUDP = regexp.MustCompile(`listening.*"udp": ?"([^"]+)"`)

// serving runs a command in the background until the test cancels it, and
// finds its HTTP/3 address in its JSON logs.
func serving(t *testing.T, args []string) (addr string, stop func() error) {
	t.Helper()
	addr, _, stop = servingLogs(t, args)
	return addr, stop
}

// servingLogs is serving, returning the command's logs too.
func servingLogs(t *testing.T, args []string) (addr string, logs *syncBuffer, stop func() error) {
	t.Helper()
	logs = new(syncBuffer)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, logs) }()
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no listening log line:\n%s", logs.String())
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("%v exited: %v\n%s", args, err, logs.String())
		case <-time.After(10 * time.Millisecond):
		}
		// The "listening" line, JSON or console: its fields are JSON.
		if m := listeningUDP.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		}
	}
	return addr, logs, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("did not stop")
		}
	}
}

// startLegacyApp starts the legacy app on loopback, closed when the test
// ends.
func startLegacyApp(t *testing.T, name string) *legacyapp.App {
	t.Helper()
	app, err := legacyapp.Start("127.0.0.1:0", name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	return app
}

// getThrough does one HTTP/3 GET through the proxy at addr, trusting the
// local CA in dataDir.
func getThrough(t *testing.T, addr, dataDir string) legacyapp.Request {
	t.Helper()
	pool := localRoots(t, dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Listeners open before certificates load: retry until the handshake
	// finds one, as a client would.
	var c *h3client.Conn
	var err error
	for c == nil {
		if c, err = h3client.Dial(ctx, addr, &tls.Config{RootCAs: pool, ServerName: "localhost"}, nil); err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer c.Close()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://localhost/", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r legacyapp.Request
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	return r
}

func TestRunServesARoamfile(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := writeFile(t, dir, "Roamfile", `{
	default_bind 127.0.0.1
	data_dir `+dataDir+`
	log {
		format json
	}
}
localhost:0 {
	reverse_proxy `+app.Addr()+`
}
`)
	addr, stop := serving(t, []string{"run", "--config", roamfile, "--grace", "2s"})
	if r := getThrough(t, addr, dataDir); r.XForwardedFor != "127.0.0.1" {
		t.Fatalf("app saw %+v", r)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestReverseProxyCommand(t *testing.T) {
	app := startLegacyApp(t, "app")
	dataDir := t.TempDir()
	addr, stop := serving(t, []string{"reverse-proxy", "--from", "localhost:0", "--to", app.Addr(), "--bind", "127.0.0.1", "--data-dir", dataDir})
	if r := getThrough(t, addr, dataDir); r.Conn != 1 {
		t.Fatalf("app saw %+v", r)
	}
	if err := stop(); err != nil {
		t.Fatalf("reverse-proxy: %v", err)
	}
	if _, err := reverseProxyConfig("localhost:0", "a:1 {", "", upstreamTLSFlags{}); err == nil {
		t.Fatal("a brace in --to was accepted")
	}
}

// TestReverseProxyBindsTheAddressItNames (issue 13): --from with an IP
// address listens on that address only (it listened on every interface
// unless --bind was given); a name, or no host, keeps all interfaces;
// --bind wins. And the command says where it serves.
func TestReverseProxyBindsTheAddressItNames(t *testing.T) {
	for _, tc := range []struct {
		from, bind string
		want       []string
	}{
		{"127.0.0.1:8443", "", []string{"127.0.0.1"}},
		{"[::1]:8443", "", []string{"::1"}},
		{"https://127.0.0.1:8443", "", []string{"127.0.0.1"}},
		{"localhost:8443", "", nil},
		{":8443", "", nil},
		{"127.0.0.1:8443", "::1", []string{"::1"}},
	} {
		cfg, err := reverseProxyConfig(tc.from, "127.0.0.1:9", tc.bind, upstreamTLSFlags{})
		if err != nil {
			t.Fatalf("%s: %v", tc.from, err)
		}
		if !slices.Equal(cfg.DefaultBind, tc.want) {
			t.Errorf("--from %s --bind %q: binds %q, want %q", tc.from, tc.bind, cfg.DefaultBind, tc.want)
		}
	}

	app := startLegacyApp(t, "app")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"reverse-proxy", "--from", "127.0.0.1:0", "--to", app.Addr(), "--data-dir", t.TempDir()}, io.Discard, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "roamgate reverse-proxy: serving 127.0.0.1:0 on UDP 127.0.0.1:") {
		if time.Now().After(deadline) {
			t.Fatalf("no serving line:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if line := stderr.String(); strings.Contains(line, "0.0.0.0") || strings.Contains(line, "[::]") {
		t.Fatalf("listens beyond 127.0.0.1:\n%s", line)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestReverseProxyCommandTLS: reverse-proxy --to https://... speaks TLS to
// the upstream, trusting --upstream-ca; the other upstream flags become
// the reverse_proxy's tls_* settings.
func TestReverseProxyCommandTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "backend-ca")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := legacyapp.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{ca.IssueServer(t, "127.0.0.1")}}), "app", nil)
	defer app.Close()
	dataDir := filepath.Join(dir, "data")
	addr, stop := serving(t, []string{"reverse-proxy", "--from", "localhost:0", "--to", "https://" + ln.Addr().String(),
		"--upstream-ca", ca.File, "--bind", "127.0.0.1", "--data-dir", dataDir})
	if r := getThrough(t, addr, dataDir); r.Conn != 1 {
		t.Fatalf("app saw %+v", r)
	}
	if err := stop(); err != nil {
		t.Fatalf("reverse-proxy: %v", err)
	}

	cfg, err := reverseProxyConfig("localhost:0", "https://a:1,https://b:1", "", upstreamTLSFlags{
		ca: "a.pem,b.pem", serverName: "app.internal", cert: "c.pem", key: "k.pem",
	})
	if err != nil {
		t.Fatal(err)
	}
	up := cfg.Sites[0].Routes[0].ReverseProxy.TLS
	if up == nil || len(up.CAFiles) != 2 || up.ServerName != "app.internal" || up.ClientCert.Path != "c.pem" || up.ClientKey.Path != "k.pem" {
		t.Fatalf("upstream TLS %+v", up)
	}
	cfg, err = reverseProxyConfig("localhost:0", "https://a:1", "", upstreamTLSFlags{insecure: true})
	if err != nil || !cfg.Sites[0].Routes[0].ReverseProxy.TLS.InsecureSkipVerify {
		t.Fatalf("--upstream-insecure: %v", err)
	}
	if _, err := reverseProxyConfig("localhost:0", "https://a:1", "", upstreamTLSFlags{cert: "c.pem"}); err == nil {
		t.Fatal("--upstream-cert without --upstream-key was accepted")
	}
	if _, err := reverseProxyConfig("localhost:0", "a:1", "", upstreamTLSFlags{ca: "a.pem"}); err == nil ||
		!strings.Contains(err.Error(), "tls_ca: needs https:// upstreams") {
		t.Fatalf("--upstream-ca with a plain upstream: %v", err)
	}
}

func TestCookieSecretPersists(t *testing.T) {
	dir := t.TempDir()
	a, err := cookieSecret(dir)
	if err != nil || len(a) != 32 {
		t.Fatalf("first: %v, %d bytes", err, len(a))
	}
	b, err := cookieSecret(dir)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("second: %v, same key: %v", err, bytes.Equal(a, b))
	}
	fi, err := os.Stat(filepath.Join(dir, "lb_cookie_secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, fi.Mode())
	}
}

// TestSubcommandHelp (issue 13): every subcommand's --help (and -h) goes to
// stdout and ends as help (exit 0), naming the command's arguments; a flag
// mistake still goes to stderr as a usage error.
func TestSubcommandHelp(t *testing.T) {
	for cmd, want := range map[string]string{
		"run": "Usage: roamgate run [flags]", "validate": "Usage: roamgate validate [flags]",
		"reverse-proxy": "Usage: roamgate reverse-proxy --from HOST:PORT --to UPSTREAM",
		"demo":          "Usage: roamgate demo [flags]", "trust": "Usage: roamgate trust [flags]",
		"health": "Usage: roamgate health [flags]", "connect": "Usage: roamgate connect [flags] https://EDGE[:PORT]",
		"probe": "Usage: roamgate probe [flags] URL", "cid decode": "Usage: roamgate cid decode",
		"fmt": "Usage: roamgate fmt [--overwrite] [FILE]",
	} {
		for _, h := range []string{"--help", "-h"} {
			var out, errOut bytes.Buffer
			args := append(strings.Fields(cmd), h)
			err := run(context.Background(), args, &out, &errOut)
			if !errors.Is(err, flag.ErrHelp) || !strings.HasPrefix(out.String(), want) || errOut.Len() != 0 {
				t.Errorf("%v: %v, stdout %q, stderr %q", args, err, out.String(), errOut.String())
			}
		}
		var out, errOut bytes.Buffer
		args := append(strings.Fields(cmd), "--no-such-flag")
		if err := run(context.Background(), args, &out, &errOut); !errors.Is(err, errUsage) || out.Len() != 0 || !strings.Contains(errOut.String(), "no-such-flag") {
			t.Errorf("%v: %v, stdout %q, stderr %q", args, err, out.String(), errOut.String())
		}
	}
}

// TestDurationErrorsShowTheSyntax (issue 13): a bad duration, in a flag or
// in the Roamfile, says what one looks like.
func TestDurationErrorsShowTheSyntax(t *testing.T) {
	var errOut bytes.Buffer
	if err := run(context.Background(), []string{"run", "--grace", "5sec"}, io.Discard, &errOut); !errors.Is(err, errUsage) ||
		!strings.Contains(errOut.String(), `invalid duration "5sec" (examples: 500ms, 5s, 2m, 1h30m)`) {
		t.Fatalf("--grace 5sec: %v, %q", err, errOut.String())
	}
	f := writeFile(t, t.TempDir(), "Roamfile", "a {\n\treverse_proxy b {\n\t\tdial_timeout 5sec\n\t}\n}\n")
	err := run(context.Background(), []string{"validate", "--config", f}, io.Discard, io.Discard)
	if want := f + `:3:16: reverse_proxy: dial_timeout: invalid duration "5sec" (examples: 500ms, 5s, 2m, 1h30m)`; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("validate: %v, want %q", err, want)
	}
}

// TestReverseProxyErrorsNameTheFlag (issue 13): a bad flag value is the
// flag's error, not a position in a Roamfile the user never wrote, and a
// port in use is said once, with how to find its owner.
func TestReverseProxyErrorsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", "20443", "--to", "127.0.0.1:1"}, `--from "20443": site address "20443": invalid host "20443"`},
		{[]string{"--from", ":20443", "--to", "x:99999"}, `--to "x:99999": upstream "x:99999": invalid port "99999" (want 1-65535)`},
		{[]string{"--from", ":20443", "--to", "https://a:1", "--upstream-ca", filepath.Join(t.TempDir(), "none.pem")}, `--upstream-ca: tls_ca: "`},
	} {
		err := run(context.Background(), append([]string{"reverse-proxy"}, tc.args...), io.Discard, io.Discard)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "reverse-proxy:") {
			t.Errorf("%v: %v, want it to start %q", tc.args, err, tc.want)
		}
	}
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = run(context.Background(), []string{"reverse-proxy", "--from", busy.LocalAddr().String(), "--to", "127.0.0.1:1", "--data-dir", t.TempDir()}, io.Discard, io.Discard)
	if err == nil || strings.Count(err.Error(), "listen udp") != 1 || !strings.Contains(err.Error(), "address already in use (another process has the port: ss") {
		t.Fatalf("port in use: %v", err)
	}
}

// TestFmt (issue 13): roamgate fmt prints the canonical layout; with
// --overwrite it rewrites the file, keeping its mode; a broken file is an
// error at its place and is left as it was.
func TestFmt(t *testing.T) {
	dir := t.TempDir()
	f := writeFile(t, dir, "Roamfile", "# edge\na.com { reverse_proxy b:1 { dial_timeout 1s } }\n")
	const want = "# edge\na.com {\n\treverse_proxy b:1 {\n\t\tdial_timeout 1s\n\t}\n}\n"
	var out bytes.Buffer
	if err := run(context.Background(), []string{"fmt", f}, &out, io.Discard); err != nil || out.String() != want {
		t.Fatalf("fmt: %v\n%s", err, out.String())
	}
	if err := run(context.Background(), []string{"fmt", "--overwrite", f}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(f); string(got) != want {
		t.Fatalf("rewritten:\n%s", got)
	}
	if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600 kept", fi.Mode())
	}
	broken := writeFile(t, dir, "Broken", "a {\n\trespond 1\n")
	err := run(context.Background(), []string{"fmt", "--overwrite", broken}, io.Discard, io.Discard)
	if want := broken + `:1:3: "{" has no matching "}"`; err == nil || err.Error() != want {
		t.Fatalf("broken: %v, want %s", err, want)
	}
	if got, _ := os.ReadFile(broken); string(got) != "a {\n\trespond 1\n" {
		t.Fatalf("a broken file was written: %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("left behind: %v", ents)
	}
}

// TestReverseProxyGlobalFlags (issue 13): --admin, --log-level,
// --log-format and --access-log=false become the global options, checked
// as the Roamfile's are.
func TestReverseProxyGlobalFlags(t *testing.T) {
	cfg, err := reverseProxyConfig("127.0.0.1:0", "127.0.0.1:9", "", upstreamTLSFlags{},
		globalFlags{admin: "127.0.0.1:0", logLevel: "debug", logFormat: "json", accessLog: false})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin != "127.0.0.1:0" || cfg.Log.Level != "debug" || cfg.Log.Format != "json" || !cfg.Log.Access.Off ||
		!slices.Equal(cfg.DefaultBind, []string{"127.0.0.1"}) {
		t.Fatalf("config %+v", cfg)
	}
	if cfg, err := reverseProxyConfig("127.0.0.1:0", "127.0.0.1:9", "", upstreamTLSFlags{}); err != nil || cfg.Admin != "" || cfg.Log.Access.Off {
		t.Fatalf("defaults: %v %+v", err, cfg)
	}
	_, err = reverseProxyConfig(":0", "127.0.0.1:9", "", upstreamTLSFlags{}, globalFlags{logLevel: "verbose", accessLog: true})
	if want := `--log-level "verbose": log: unknown level "verbose"`; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("--log-level verbose: %v", err)
	}
}
