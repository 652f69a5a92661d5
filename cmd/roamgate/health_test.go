package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/roamgate/roamgate/examples/legacyapp"
)

// TestHelperProcess is not a test: started by roamgateProcess with
// ROAMGATE_HELPER_PROCESS=1, it is roamgate, running main with the
// arguments after "--".
func TestHelperProcess(t *testing.T) {
	if os.Getenv("ROAMGATE_HELPER_PROCESS") != "1" {
		t.Skip("runs only as a helper process")
	}
	i := slices.Index(os.Args, "--")
	os.Args = append([]string{"roamgate"}, os.Args[i+1:]...)
	main()
	os.Exit(0) // main returned: success, as for the real binary
}

// roamgateProcess runs roamgate with args as a process of its own (the test
// binary, as TestHelperProcess) and returns its exit code and output.
func roamgateProcess(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-test.run=^TestHelperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "ROAMGATE_HELPER_PROCESS=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return ee.ExitCode(), out.String(), errOut.String()
	} else if err != nil {
		t.Fatalf("roamgate %v: %v", args, err)
	}
	return 0, out.String(), errOut.String()
}

var adminListening = regexp.MustCompile(`admin endpoint listening.*"addr": ?"([^"]+)"`)

// waitReady polls the admin endpoint's /readyz until it answers 200.
func waitReady(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body, err := askHealth(context.Background(), "http://"+admin+"/readyz", time.Second)
		if err == nil && status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered 200: %d %q %v", status, body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHealthCommand runs `roamgate health` as a Docker HEALTHCHECK or a
// Kubernetes exec probe would, as a process of its own, against a running
// roamgate: exit 0 when healthy (or ready), 1 with the reason on stderr when
// not, the admin address from --admin or from the Roamfile.
func TestHealthCommand(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	dead := deadAddr(t)
	roamfile := writeFile(t, dir, "Roamfile", `{
	default_bind 127.0.0.1
	data_dir `+dataDir+`
	admin 127.0.0.1:0
	log {
		format json
	}
}
localhost:0 {
	handle /api/* {
		reverse_proxy `+dead+` {
			health_uri /health
		}
	}
	reverse_proxy `+app.Addr()+`
}
`)
	_, logs, stop := servingLogs(t, []string{"run", "--config", roamfile, "--grace", "1s"})
	m := adminListening.FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no admin address in the logs:\n%s", logs.String())
	}
	admin := m[1]

	// Alive, but not ready: a reverse_proxy has no healthy backend.
	if code, out, errOut := roamgateProcess(t, "health", "--admin", admin); code != 0 || out != "serving ok\n" {
		t.Fatalf("health: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// The dead backend's first check runs as serving starts: wait for it
	// here, then ask as a probe would.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body, err := askHealth(context.Background(), "http://"+admin+"/readyz", time.Second)
		if err == nil && strings.Contains(body, "upstreams failed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never named the upstreams: %q %v", body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, _, errOut := roamgateProcess(t, "health", "--admin", admin, "--ready")
	want := "roamgate: not ready (" + admin + "/readyz: 503): upstreams failed: " + roamfile + ":11:3: reverse_proxy: no healthy backend (" + dead + ")\n"
	if code != 1 || errOut != want {
		t.Fatalf("health --ready: exit %d, stderr\n%q\nwant\n%q", code, errOut, want)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Ready, the address read from a Roamfile.
	healthy := writeFile(t, dir, "Healthy", `{
	default_bind 127.0.0.1
	data_dir `+dataDir+`
	admin 127.0.0.1:0
	log {
		format json
	}
}
localhost:0 {
	reverse_proxy `+app.Addr()+`
}
`)
	_, logs, stop = servingLogs(t, []string{"run", "--config", healthy, "--grace", "1s"})
	admin = adminListening.FindStringSubmatch(logs.String())[1]
	waitReady(t, admin)
	withAdmin := writeFile(t, dir, "WithAdmin", "{\n\tadmin "+admin+"\n}\nlocalhost {\n\trespond 200\n}\n")
	if code, out, errOut := roamgateProcess(t, "health", "--config", withAdmin, "--ready"); code != 0 || out != "listeners ok\ncertificates ok\nupstreams ok\n" {
		t.Fatalf("health --config --ready: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// Nothing listening, and no admin option: exit 1, saying why.
	code, _, errOut = roamgateProcess(t, "health", "--config", withAdmin)
	if code != 1 || !strings.Contains(errOut, "health endpoint "+admin+": ") || !strings.Contains(errOut, "connection refused") {
		t.Fatalf("health with nothing listening: exit %d, stderr %q", code, errOut)
	}
	noAdmin := writeFile(t, dir, "NoAdmin", "localhost {\n\trespond 200\n}\n")
	code, _, errOut = roamgateProcess(t, "health", "--config", noAdmin)
	if code != 1 || !strings.Contains(errOut, noAdmin+" has no admin option") {
		t.Fatalf("health without an admin option: exit %d, stderr %q", code, errOut)
	}
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestReloadBySIGHUPAndCommand (issue 14): `roamgate run` reloads its
// Roamfile on `roamgate reload` and on SIGHUP (whose default would end the
// process): the same client connection gets the new configuration over
// the same upstream connection; an invalid edit is refused with its place,
// and the old configuration goes on; a change that needs a restart too.
func TestReloadBySIGHUPAndCommand(t *testing.T) {
	app := startLegacyApp(t, "app")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	roamfile := func(gen, extra string) string {
		return "{\n\tdefault_bind 127.0.0.1\n\tdata_dir " + dataDir + "\n}\n127.0.0.1:0 {\n\theader X-Gen " + gen + "\n" + extra + "\treverse_proxy " + app.Addr() + "\n}\n"
	}
	f := writeFile(t, dir, "Roamfile", roamfile("1", ""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "--", "run", "--config", f, "--grace", "1s")
	cmd.Env = append(os.Environ(), "ROAMGATE_HELPER_PROCESS=1")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("exited (%v) waiting for %s:\n%s", err, what, stderr.String())
			case <-ctx.Done():
				t.Fatalf("no %s:\n%s", what, stderr.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitFor("serving", func() bool { return strings.Contains(stderr.String(), "serving") })
	m := listeningUDP.FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no listening line:\n%s", stderr.String())
	}
	c := dialEdge(t, m[1], dataDir)
	get := func() (string, legacyapp.Request) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+m[1]+"/", nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r legacyapp.Request
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d: %v", resp.StatusCode, err)
		}
		return resp.Header.Get("X-Gen"), r
	}
	gen, first := get()
	if gen != "1" {
		t.Fatalf("X-Gen %q", gen)
	}

	// roamgate reload
	os.WriteFile(f, []byte(roamfile("2", "")), 0o600)
	var out bytes.Buffer
	if err := run(ctx, []string{"reload", "--config", f}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "reloaded") {
		t.Fatalf("reload: %v %q\n%s", err, out.String(), stderr.String())
	}
	if gen, r := get(); gen != "2" || r.Conn != first.Conn {
		t.Fatalf("after reload: X-Gen %q over upstream connection %d (was %d)", gen, r.Conn, first.Conn)
	}

	// An invalid edit: refused with its place, generation 2 goes on.
	os.WriteFile(f, []byte(roamfile("3", "\tmax_con 4\n")), 0o600)
	err := run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), f+":7:2:") {
		t.Fatalf("invalid reload: %v", err)
	}
	// A change that needs a restart: refused by the server.
	os.WriteFile(f, []byte(strings.Replace(roamfile("3", ""), "\tdata_dir ", "\tzero_rtt off\n\tdata_dir ", 1)), 0o600)
	if err := run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "needs a restart") {
		t.Fatalf("zero_rtt change: %v", err)
	}
	if gen, _ := get(); gen != "2" {
		t.Fatalf("after refused reloads: X-Gen %q", gen)
	}

	// SIGHUP
	os.WriteFile(f, []byte(roamfile("4", "")), 0o600)
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor("the SIGHUP reload", func() bool { return strings.Contains(stderr.String(), `"trigger": "SIGHUP"`) })
	if gen, r := get(); gen != "4" || r.Conn != first.Conn {
		t.Fatalf("after SIGHUP: X-Gen %q over upstream connection %d (was %d)", gen, r.Conn, first.Conn)
	}
	c.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dataDir, controlSocket)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("control socket left behind: %v", err)
	}
}

// TestVersion (issue 13): a binary built from the checkout names its
// version, VCS revision and time, and Go version, for `version`,
// `--version` and `-v` alike.
func TestVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds roamgate")
	}
	bin := filepath.Join(t.TempDir(), "roamgate")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true (a git checkout): %v\n%s", err, out)
	}
	want := regexp.MustCompile(`^roamgate \S+\nrevision [0-9a-f]{40} \(\d{4}-\d\d-\d\dT[0-9:]+Z\)(, modified)?\ngo1\.\d+\S* \w+/\w+\n$`)
	for _, arg := range []string{"version", "--version", "-v"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil || !want.Match(out) {
			t.Errorf("roamgate %s: %v\n%s", arg, err, out)
		}
	}
}

// TestRunWatch (issue 14): run --watch reloads when its Roamfile changes,
// also when the file is a Kubernetes ConfigMap's: a symlink through a
// "..data" link that is swapped to a new directory; a bad version is
// refused and the one before goes on.
func TestRunWatch(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	version := func(name, body string) {
		t.Helper()
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		writeFile(t, filepath.Join(dir, name), "Roamfile", "{\n\tdefault_bind 127.0.0.1\n\tdata_dir "+dataDir+"\n}\n127.0.0.1:0 {\n\t"+body+"\n}\n")
	}
	swap := func(name string) { // as the kubelet does: a new link renamed over ..data
		t.Helper()
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("v1", `respond "one"`)
	version("v2", `respond "two"`)
	version("v3", `respond "three" {`)
	swap("v1")
	if err := os.Symlink(filepath.Join("..data", "Roamfile"), filepath.Join(dir, "Roamfile")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"run", "--config", filepath.Join(dir, "Roamfile"), "--watch", "--grace", "1s"}, io.Discard, &logs)
	}()
	deadline := time.Now().Add(20 * time.Second)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("no %s:\n%s", what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("serving", func() bool { return strings.Contains(logs.String(), "serving") })
	m := listeningUDP.FindStringSubmatch(logs.String())
	c := dialEdge(t, m[1], dataDir)
	body := func() string {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+m[1]+"/", nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := body(); got != "one" {
		t.Fatalf("body %q", got)
	}
	swap("v2")
	waitFor("the watch's reload", func() bool { return strings.Contains(logs.String(), "reloaded") })
	if got := body(); got != "two" {
		t.Fatalf("after the swap: %q", got)
	}
	swap("v3")
	waitFor("the refused reload", func() bool { return strings.Contains(logs.String(), "reload refused") })
	if got := body(); got != "two" {
		t.Fatalf("after a bad version: %q", got)
	}
	c.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSystemdNotify (issue 14): under systemd's Type=notify (or
// notify-reload), run says READY=1 once it serves, RELOADING=1 (with
// MONOTONIC_USEC) then READY=1 around a reload, STOPPING=1 when it stops.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	f := writeFile(t, dir, "Roamfile", "{\n\tdefault_bind 127.0.0.1\n\tdata_dir "+filepath.Join(dir, "data")+"\n}\n127.0.0.1:0 {\n\trespond ok\n}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--config", f, "--grace", "1s"}, io.Discard, io.Discard) }()
	next := func() string {
		t.Helper()
		ln.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 256)
		n, err := ln.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:n])
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q", got)
	}
	if err := run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := next(); !regexp.MustCompile(`^RELOADING=1\nMONOTONIC_USEC=\d+$`).MatchString(got) {
		t.Fatalf("reload began: %q", got)
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("reload ended: %q", got)
	}
	cancel()
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("stopping: %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
