package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/handoff"
	"github.com/roamgate/roamgate/tlsmgr"
)

// binaries builds roamgate twice, once per test binary: the version to
// start and the one to upgrade to (they differ in their link-time
// version, so each is a different file).
var binaries = sync.OnceValues(func() ([2]string, error) {
	dir, err := os.MkdirTemp("", "roamgate-upgrade-bin-")
	if err != nil {
		return [2]string{}, err
	}
	var out [2]string
	var errs [2]error
	var wg sync.WaitGroup
	for i, v := range []string{"upgrade-test-1", "upgrade-test-2"} {
		out[i] = filepath.Join(dir, v)
		wg.Go(func() {
			b, err := exec.Command("go", "build", "-ldflags", "-X main.buildVersion="+v, "-o", out[i], ".").CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("go build: %v\n%s", err, b)
			}
		})
	}
	wg.Wait()
	builtDir = dir
	if errs[0] != nil {
		return out, errs[0]
	}
	return out, errs[1]
})

// builtDir holds the binaries; TestMain removes it.
var builtDir string

// upgradeFixture is a roamgate process started from a freshly built
// binary, with its log in a file (so that the successor it starts, which
// inherits the file, never keeps a pipe of the test open).
type upgradeFixture struct {
	t       *testing.T
	dir     string
	bin     string // the path the process runs from
	next    string // the binary the upgrade installs at bin
	dataDir string
	config  string
	logPath string
	grace   string // upgrade_grace
	global  string // more global options
	apps    []*legacyapp.App
	cmd     *exec.Cmd
	exited  chan error
}

func (f *upgradeFixture) log() string {
	b, _ := os.ReadFile(f.logPath)
	return string(b)
}

// serving waits until the process serves and returns its UDP address.
func (f *upgradeFixture) serving() string {
	f.t.Helper()
	addr := f.waitLog("listening line", listeningUDP, 0)[1]
	f.waitLog("serving", regexp.MustCompile(`\bserving\b`), 0)
	return addr
}

// waitExit waits up to 30 s for the process to exit with status 0, and
// fails the test with notYet (or the exit error) otherwise.
func (f *upgradeFixture) waitExit(notYet string) {
	f.t.Helper()
	select {
	case err := <-f.exited:
		f.exited <- err // for the cleanup
		if err != nil {
			f.t.Fatalf("old process: %v", err)
		}
	case <-time.After(30 * time.Second):
		f.t.Fatal(notYet)
	}
}

// waitLog waits until the log matches re, and returns the match.
func (f *upgradeFixture) waitLog(what string, re *regexp.Regexp, after int) []string {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		l := f.log()
		if after < len(l) {
			if m := re.FindStringSubmatch(l[after:]); m != nil {
				return m
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("no %s in the log:\n%s", what, l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *upgradeFixture) roamfile(gen, backends, extra string) string {
	return "{\n\tdefault_bind 127.0.0.1\n\tdata_dir " + f.dataDir + "\n\tupgrade_steering " + filepath.Base(f.dir) +
		"\n\tupgrade_grace " + f.grace + "\n" + f.global + "}\n127.0.0.1:0 {\n\theader X-Gen " + gen + "\n\treverse_proxy " + backends + "\n}\n" + extra
}

func startUpgradeFixture(t *testing.T, mode string) *upgradeFixture {
	return startUpgradeFixtureWith(t, mode, "1m", "")
}

// startUpgradeFixtureGrace is startUpgradeFixture with an upgrade_grace
// of the test's.
func startUpgradeFixtureGrace(t *testing.T, mode, grace string) *upgradeFixture {
	return startUpgradeFixtureWith(t, mode, grace, "")
}

// startUpgradeFixtureWith is startUpgradeFixture with an upgrade_grace and
// more global options (lines ending in a newline) of the test's.
func startUpgradeFixtureWith(t *testing.T, mode, grace, global string) *upgradeFixture {
	bins, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	f := &upgradeFixture{t: t, dir: filepath.Join(root, mode), dataDir: filepath.Join(root, "data"), grace: grace, global: global, exited: make(chan error, 1)}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.bin, f.next = filepath.Join(f.dir, "roamgate"), filepath.Join(f.dir, "roamgate.next")
	for src, dst := range map[string]string{bins[0]: f.bin, bins[1]: f.next} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.apps = []*legacyapp.App{startLegacyApp(t, "app1"), startLegacyApp(t, "app2"), startLegacyApp(t, "app3")}
	f.config = writeFile(t, root, "Roamfile", f.roamfile("1", f.apps[0].Addr()+" "+f.apps[1].Addr(), ""))
	f.logPath = filepath.Join(root, "roamgate.log")
	logFile, err := os.Create(f.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	f.cmd = exec.Command(f.bin, "run", "--config", f.config, "--grace", "2s")
	f.cmd.Stdout, f.cmd.Stderr = logFile, logFile
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { f.exited <- f.cmd.Wait() }()
	t.Cleanup(func() {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.exited:
		case <-time.After(20 * time.Second):
			_ = f.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("roamgate log:\n%s", f.log())
		}
	})
	return f
}

// connEnds are the two ends of an upstream connection: roamgate's (local)
// and the backend's (peer).
type connEnds struct{ local, peer string }

// upstreamConn names the upstream connection that carried a request: the
// app and its connection number.
type upstreamConn struct {
	app  string
	conn int
}

// result is one request of the load.
type result struct {
	client   int
	start    time.Time
	latency  time.Duration
	err      error
	gen      string
	upstream upstreamConn
	ends     connEnds // the upstream connection's addresses
}

// loadClient is an HTTP/3 client of the load with two requests in flight.
type loadClient struct {
	id   int
	conn *h3client.Conn
	addr string
}

func (lc *loadClient) get(ctx context.Context) result {
	r := result{client: lc.id, start: time.Now()}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, "GET", "https://"+lc.addr+"/", nil)
	req.Header.Set("X-Client", strconv.Itoa(lc.id))
	resp, err := lc.conn.RoundTrip(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	var lr legacyapp.Request
	if err := json.NewDecoder(resp.Body).Decode(&lr); err != nil || resp.StatusCode != 200 {
		r.err = fmt.Errorf("status %d: %v", resp.StatusCode, err)
		return r
	}
	r.latency = time.Since(r.start)
	r.gen, r.upstream, r.ends = resp.Header.Get("X-Gen"), upstreamConn{lr.App, lr.Conn}, connEnds{lr.Remote, lr.Local}
	return r
}

// load runs the clients, two requests in flight each, until stop; results
// go to out.
func load(ctx context.Context, clients []*loadClient, out *[]result, mu *sync.Mutex) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, c := range clients {
		for range 2 {
			wg.Go(func() {
				for ctx.Err() == nil {
					r := c.get(ctx)
					if ctx.Err() != nil && r.err != nil {
						return // stopped mid-request
					}
					mu.Lock()
					*out = append(*out, r)
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
				}
			})
		}
	}
	return func() { cancel(); wg.Wait() }
}

// socketOwner returns which of pids holds the TCP socket of the upstream
// connection conn names (roamgate's end at local, the backend's at peer,
// both 127.0.0.1:PORT), or 0: it tells which process opened it. Both ends
// are matched, as Linux reuses a local port for connections to other
// peers.
func socketOwner(t testing.TB, conn connEnds, pids ...int) int {
	t.Helper()
	hexAddr := func(a string) string {
		_, port, _ := strings.Cut(a, ":")
		p, _ := strconv.Atoi(port)
		return fmt.Sprintf("0100007F:%04X", p)
	}
	local, peer := hexAddr(conn.local), hexAddr(conn.peer)
	fh, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	inode := ""
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 9 && f[1] == local && f[2] == peer && f[9] != "0" { // not a TIME_WAIT left by an earlier one
			inode = f[9]
		}
	}
	if inode == "" {
		return 0
	}
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

// tcpResult is one request of a TCP client.
type tcpResult struct {
	proto string
	at    time.Time
	err   error
	owner int // the roamgate process whose upstream connection served it
}

// tcpLoad sends requests one after another over HTTP/2 (h2) or HTTP/1.1
// with keep-alive until ctx ends.
func tcpLoad(ctx context.Context, addr, dataDir string, h2 bool, whose func(connEnds) int) []tcpResult {
	pem, err := os.ReadFile(tlsmgr.RootCertPath(dataDir))
	if err != nil {
		return []tcpResult{{err: err}}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, ForceAttemptHTTP2: h2}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var out []tcpResult
	for ctx.Err() == nil {
		r := tcpResult{proto: "HTTP/1.1", at: time.Now()}
		if h2 {
			r.proto = "HTTP/2"
		}
		resp, err := client.Get("https://" + addr + "/")
		if err != nil {
			r.err = err
		} else {
			var lr legacyapp.Request
			if err := json.NewDecoder(resp.Body).Decode(&lr); err != nil || resp.StatusCode != 200 {
				r.err = fmt.Errorf("status %d: %v", resp.StatusCode, err)
			} else if (resp.ProtoMajor == 2) != h2 {
				r.err = fmt.Errorf("served over %s", resp.Proto)
			}
			resp.Body.Close()
			r.owner = whose(connEnds{lr.Remote, lr.Local})
		}
		out = append(out, r)
		time.Sleep(10 * time.Millisecond)
	}
	return out
}

var newProcessServes = regexp.MustCompile(`the new process serves; this one drains.*"pid": ?(\d+)`)

// TestUpgradeUnderLoad (issue 14): 50 HTTP/3 clients with two requests in
// flight each, half of them migrating during the changes, across a reload
// that changes headers, an invalid one, and a SIGUSR2 upgrade to a freshly
// built binary; the other half migrate while the old process drains. No
// request fails, no client handshakes again, every session keeps its
// upstream connections in the old process, new connections are served by
// the new binary, and the old process exits once its clients leave. Once
// with the BPF program steering packets, once forwarding them.
func TestUpgradeUnderLoad(t *testing.T) {
	upgradeTest(t, "builds roamgate twice and runs 50 clients")
	inBothModes(t, testUpgradeUnderLoad)
}

// upgradeTest skips an upgrade test in -short mode (why says what it costs)
// and makes the test process the subreaper of the processes it starts: an
// upgrade's new process outlives its parent, the old one, and the test
// reaps it (stopProcess).
func upgradeTest(t *testing.T, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip(why)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
}

// inBothModes runs test once per upgrade_steering mode, bpf (where
// permitted; see needBPF) and forward.
func inBothModes(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range []string{"bpf", "forward"} {
		t.Run(mode, func(t *testing.T) {
			needBPF(t, mode)
			test(t, mode)
		})
	}
}

// needBPF skips a bpf-mode test where BPF is not permitted, and fails it in
// CI, which runs as root.
func needBPF(t *testing.T, mode string) {
	t.Helper()
	if mode != "bpf" {
		return
	}
	if err := handoff.BPFSupported(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("BPF is not available in CI: %v", err)
		}
		t.Skipf("BPF not available here: %v", err)
	}
}

func testUpgradeUnderLoad(t *testing.T, mode string) {
	f := startUpgradeFixture(t, mode)
	addr := f.serving()
	if !strings.Contains(f.log(), `"mode": "`+mode+`"`) {
		t.Fatalf("not in %s mode:\n%s", mode, f.log())
	}
	oldPID := f.cmd.Process.Pid

	const n = 50
	clients := make([]*loadClient, n)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() { clients[i] = &loadClient{id: i, conn: dialEdge(t, addr, f.dataDir), addr: addr} })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var results []result
	stopLoad := load(ctx, clients, &results, &mu)
	// And TCP clients, HTTP/2 and HTTP/1.1 with keep-alive: the new
	// process inherits the listener, the old one ends their connections
	// with GOAWAY / Connection: close; nothing fails.
	tcpDone := make(chan []tcpResult, 2)
	tcpCtx, stopTCP := context.WithCancel(ctx)
	var pidsMu sync.Mutex
	pids := []int{oldPID}
	whose := func(remote connEnds) int {
		pidsMu.Lock()
		defer pidsMu.Unlock()
		return socketOwner(t, remote, pids...)
	}
	for _, h2 := range []bool{true, false} {
		go func() { tcpDone <- tcpLoad(tcpCtx, addr, f.dataDir, h2, whose) }()
	}
	stopped := false
	defer func() {
		if !stopped {
			stopLoad()
		}
	}()
	mark := func() int { mu.Lock(); defer mu.Unlock(); return len(results) }
	waitRequests := func(k int) {
		t.Helper()
		from := mark()
		for mark() < from+k {
			time.Sleep(10 * time.Millisecond)
		}
	}
	migrate := func(ids []int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, len(ids))
		for k, i := range ids {
			wg.Go(func() {
				mctx, mcancel := context.WithTimeout(ctx, 20*time.Second)
				defer mcancel()
				errs[k] = clients[i].conn.Migrate(mctx)
			})
		}
		wg.Wait()
		for k, err := range errs {
			if err != nil {
				t.Fatalf("client %d: migrate: %v", ids[k], err)
			}
		}
	}
	waitRequests(4 * n)
	baseline := mark()

	// Reload: new headers.
	os.WriteFile(f.config, []byte(f.roamfile("2", f.apps[0].Addr()+" "+f.apps[1].Addr(), "")), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// A new site: its name gets a certificate.
	other := "localhost:0 {\n\trespond \"the other site\"\n}\n"
	os.WriteFile(f.config, []byte(f.roamfile("2", f.apps[0].Addr()+" "+f.apps[1].Addr(), other)), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err != nil {
		t.Fatalf("reload adding a site: %v", err)
	}
	waitForCertificateNamed(t, addr, f.dataDir, "localhost")
	// A backend removed (app2), another added (app3): only app2's
	// sessions move.
	removalMark := mark()
	twoBackends := f.apps[0].Addr() + " " + f.apps[2].Addr()
	os.WriteFile(f.config, []byte(f.roamfile("2", twoBackends, other)), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err != nil {
		t.Fatalf("reload removing a backend: %v", err)
	}
	removed := time.Now()
	// An invalid one: refused, generation 2 serves on.
	os.WriteFile(f.config, []byte(f.roamfile("3", twoBackends, other)+"bad {\n"), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err == nil {
		t.Fatal("an invalid Roamfile was reloaded")
	}
	os.WriteFile(f.config, []byte(f.roamfile("2", twoBackends, other)), 0o600)
	waitRequests(n)
	reloadsEnd := mark()
	firstHalf := make([]int, 0, n/2)
	for i := range n / 2 {
		firstHalf = append(firstHalf, i)
	}
	migrate(firstHalf)
	waitRequests(2 * n)

	// The upgrade: a new binary at the same path, then SIGUSR2.
	if err := os.Rename(f.next, f.bin); err != nil {
		t.Fatal(err)
	}
	logAt := len(f.log())
	upgradeStart := time.Now()
	upgradeMark := mark()
	if err := f.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	m := f.waitLog("handover", newProcessServes, logAt)
	upgradeTook := time.Since(upgradeStart)
	newPID, _ := strconv.Atoi(m[1])
	t.Cleanup(func() { stopProcess(newPID) })
	pidsMu.Lock()
	pids = append(pids, newPID)
	pidsMu.Unlock()
	if fi, err := os.Stat(fmt.Sprintf("/proc/%d/exe", newPID)); err != nil {
		t.Fatal(err)
	} else if bi, _ := os.Stat(f.bin); !os.SameFile(fi, bi) {
		t.Fatal("the new process does not run the new binary")
	}
	waitRequests(2 * n)
	upgradeEnd := mark()

	// The other half migrates while the old process drains.
	secondHalf := make([]int, 0, n/2)
	for i := n / 2; i < n; i++ {
		secondHalf = append(secondHalf, i)
	}
	migrate(secondHalf)
	waitRequests(2 * n)

	// New connections go to the new process.
	for i := range 5 {
		lc := &loadClient{id: 100 + i, conn: dialEdge(t, addr, f.dataDir), addr: addr}
		r := lc.get(ctx)
		if r.err != nil {
			t.Fatalf("new client: %v", r.err)
		}
		if owner := socketOwner(t, r.ends, oldPID, newPID); owner != newPID {
			t.Fatalf("new client %d served over an upstream connection of process %d (old %d, new %d)", i, owner, oldPID, newPID)
		}
		if r.gen != "2" {
			t.Fatalf("new client: X-Gen %q", r.gen)
		}
		lc.conn.Close()
	}
	stopLoad()
	stopped = true
	stopTCP()
	for range 2 {
		rs := <-tcpDone
		owners := map[int]int{}
		for _, r := range rs {
			if r.err != nil {
				t.Errorf("%s client: %v", r.proto, r.err)
				continue
			}
			if r.at.After(upgradeStart.Add(upgradeTook)) {
				owners[r.owner]++
			}
		}
		if len(rs) == 0 || owners[newPID] == 0 {
			t.Errorf("TCP client (%d requests): none served by the new process after the upgrade (%v)", len(rs), owners)
		}
		t.Logf("%s: a TCP client: %d requests, after the upgrade by process: %v", mode, len(rs), owners)
	}

	// Every request succeeded; every session kept its upstream
	// connections, in the old process.
	sets := map[int]map[upstreamConn]bool{}
	var before, reloading, during []time.Duration
	var failed int
	for k, r := range results {
		if r.err != nil {
			failed++
			t.Errorf("client %d: request at %s: %v", r.client, r.start.Format("15:04:05.000"), r.err)
			continue
		}
		if k >= upgradeMark && r.gen != "2" {
			t.Errorf("client %d: X-Gen %q after the reload", r.client, r.gen)
		}
		if sets[r.client] == nil {
			sets[r.client] = map[upstreamConn]bool{}
		}
		sets[r.client][r.upstream] = true
		switch {
		case k < baseline:
			before = append(before, r.latency)
		case k < reloadsEnd:
			reloading = append(reloading, r.latency)
		case k >= upgradeMark && k < upgradeEnd:
			during = append(during, r.latency)
		}
	}
	// Sessions on app2 when it was removed moved once, to connections of
	// their own; every other session kept its connections throughout.
	onRemoved := map[int]bool{}
	for _, r := range results[:removalMark] {
		if r.err == nil && r.upstream.app == "app2" {
			onRemoved[r.client] = true
		}
	}
	// A request sent once the reload was done goes to another backend
	// (requests in flight there before may finish after it, however late).
	for _, r := range results {
		if r.start.After(removed) && r.err == nil && r.upstream.app == "app2" {
			t.Errorf("client %d: a request sent %v after the reload removed its backend went there", r.client, r.start.Sub(removed))
		}
	}
	moved := 0
	for id, set := range sets {
		limit := 2
		if onRemoved[id] {
			limit = 4
			moved++
		}
		if len(set) > limit {
			t.Errorf("client %d used %d upstream connections (2 in flight at most, moved: %v): %v", id, len(set), onRemoved[id], set)
		}
	}
	if moved == 0 || moved == len(clients) {
		t.Errorf("%d of %d sessions were on the removed backend: the test shows nothing", moved, len(clients))
	}
	owners := map[int]int{}
	for _, c := range clients {
		if err := c.conn.Context().Err(); err != nil {
			t.Errorf("client %d: its QUIC connection ended: %v", c.id, context.Cause(c.conn.Context()))
		}
		if c.conn.Migrations() != 1 {
			t.Errorf("client %d migrated %d times", c.id, c.conn.Migrations())
		}
		r := c.get(ctx)
		if r.err != nil {
			t.Fatalf("client %d after the upgrade: %v", c.id, r.err)
		}
		owners[socketOwner(t, r.ends, oldPID, newPID)]++
		if !sets[c.id][r.upstream] {
			t.Errorf("client %d: upstream connection %v is new (had %v)", c.id, r.upstream, sets[c.id])
		}
	}
	if owners[oldPID] != n {
		t.Errorf("old clients' upstream connections by process: %v (want all %d in the old process %d)", owners, n, oldPID)
	}
	p := func(d []time.Duration, q float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		d = slices.Clone(d)
		slices.Sort(d)
		return d[int(float64(len(d)-1)*q)]
	}
	t.Logf("%s: %d sessions moved off the removed backend, the other %d kept their connections", mode, moved, len(clients)-moved)
	t.Logf("%s: %d requests, %d failed; latency p50/p99 before the changes %v/%v (%d), during the reloads %v/%v (%d), during the upgrade %v/%v (%d); SIGUSR2 to new process serving: %v",
		mode, len(results), failed, p(before, .5), p(before, .99), len(before), p(reloading, .5), p(reloading, .99), len(reloading),
		p(during, .5), p(during, .99), len(during), upgradeTook.Round(time.Millisecond))

	// The old process exits once its clients leave.
	for _, c := range clients {
		c.conn.Close()
	}
	closed := time.Now()
	f.waitExit("the old process still runs 30 s after its last client left")
	t.Logf("%s: the old process exited %v after its last client closed", mode, time.Since(closed).Round(time.Millisecond))
	if !strings.Contains(f.log(), "drained: the last connection has closed") {
		t.Error("the old process did not log that it drained")
	}
	// The new one serves on, and answers the control socket.
	lc := &loadClient{id: 200, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	if r := lc.get(ctx); r.err != nil || socketOwner(t, r.ends, newPID) != newPID {
		t.Fatalf("after the old process left: %v", r.err)
	}
	lc.conn.Close()
	os.WriteFile(f.config, []byte(f.roamfile("4", f.apps[0].Addr()+" "+f.apps[1].Addr(), "")), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err != nil {
		t.Fatalf("reload of the new process: %v", err)
	}
}

// TestFailedUpgradeKeepsServing: a new binary that cannot serve (an
// invalid Roamfile, a binary that exits at once) leaves the old process
// serving every connection as before, the reason logged and answered to
// roamgate upgrade; a good upgrade works afterwards.
func TestFailedUpgradeKeepsServing(t *testing.T) {
	upgradeTest(t, "builds roamgate")
	f := startUpgradeFixtureWith(t, "forward", "1m", "\tupgrade_timeout 5s\n")
	addr := f.serving()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := &loadClient{id: 1, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	first := c.get(ctx)
	if first.err != nil {
		t.Fatal(first.err)
	}
	check := func(when string) {
		t.Helper()
		r := c.get(ctx)
		if r.err != nil || r.upstream != first.upstream {
			t.Fatalf("%s: %v over %v (was %v)", when, r.err, r.upstream, first.upstream)
		}
		if owner := socketOwner(t, r.ends, f.cmd.Process.Pid); owner != f.cmd.Process.Pid {
			t.Fatalf("%s: served by process %d", when, owner)
		}
	}

	// The new process cannot read its Roamfile.
	good, _ := os.ReadFile(f.config)
	os.WriteFile(f.config, append(good, "bad {\n"...), 0o600)
	at := len(f.log())
	f.cmd.Process.Signal(syscall.SIGUSR2)
	f.waitLog("failure", regexp.MustCompile(`upgrade failed: still serving.*exited before serving`), at)
	check("after a new process that could not load its Roamfile")
	os.WriteFile(f.config, good, 0o600)

	// A binary that exits at once, asked for with roamgate upgrade.
	os.WriteFile(f.bin+".broken", []byte("#!/bin/sh\necho broken binary >&2\nexit 3\n"), 0o755)
	os.Rename(f.bin+".broken", f.bin)
	err := run(ctx, []string{"upgrade", "--config", f.config}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("roamgate upgrade to a broken binary: %v", err)
	}
	if !strings.Contains(f.log(), "broken binary") {
		t.Error("the new process's output is not in the log")
	}
	check("after a binary that exited")

	// A binary that never serves: stopped after upgrade_timeout.
	os.WriteFile(f.bin+".hangs", []byte("#!/bin/sh\nexec sleep 600\n"), 0o755)
	os.Rename(f.bin+".hangs", f.bin)
	start := time.Now()
	err = run(ctx, []string{"upgrade", "--config", f.config}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "did not serve in time") || !strings.Contains(err.Error(), "upgrade_timeout 5s") {
		t.Fatalf("roamgate upgrade to a binary that hangs: %v", err)
	}
	if took := time.Since(start); took < 5*time.Second {
		t.Fatalf("given up after %v, before upgrade_timeout", took)
	}
	check("after a binary that never served")

	// A good one.
	os.Rename(f.next, f.bin)
	var out strings.Builder
	if err := run(ctx, []string{"upgrade", "--config", f.config}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "upgraded: process") {
		t.Fatalf("roamgate upgrade: %v %q", err, out.String())
	}
	newPID, _ := strconv.Atoi(f.waitLog("handover", newProcessServes, 0)[1])
	t.Cleanup(func() { stopProcess(newPID) })
	check("during the drain")
	// Only two processes: a second upgrade waits for the first to drain.
	err = run(ctx, []string{"upgrade", "--config", f.config}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "still draining") {
		t.Fatalf("an upgrade while the previous process drains: %v", err)
	}
	c.conn.Close()
	f.waitExit("the old process did not exit")
}

// TestUpgradeGraceEnds: a client that never leaves keeps the old process
// only until upgrade_grace: then it is told to go away (its connection
// ends), the old process exits, and the client's next connection is the
// new process's.
func TestUpgradeGraceEnds(t *testing.T) {
	upgradeTest(t, "builds roamgate")
	f := startUpgradeFixtureGrace(t, "forward", "2s")
	addr := f.serving()
	oldPID := f.cmd.Process.Pid
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := &loadClient{id: 1, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer c.conn.Close()
	if r := c.get(ctx); r.err != nil {
		t.Fatal(r.err)
	}
	at := len(f.log())
	os.Rename(f.next, f.bin)
	if err := f.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID, _ := strconv.Atoi(f.waitLog("handover", newProcessServes, at)[1])
	t.Cleanup(func() { stopProcess(newPID) })
	// Still the old process's while it drains.
	if r := c.get(ctx); r.err != nil {
		t.Fatalf("during the drain: %v", r.err)
	} else if owner := socketOwner(t, r.ends, oldPID, newPID); owner != oldPID {
		t.Fatalf("during the drain: served by process %d (old %d)", owner, oldPID)
	}
	select {
	case <-c.conn.Context().Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the client was not told to go away after upgrade_grace")
	}
	f.waitExit("the old process still runs after upgrade_grace")
	if !strings.Contains(f.log()[at:], "upgrade_grace over: the remaining connections are told to go away") {
		t.Fatalf("no log line for the end of upgrade_grace:\n%s", f.log()[at:])
	}
	next := &loadClient{id: 2, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer next.conn.Close()
	if r := next.get(ctx); r.err != nil {
		t.Fatalf("reconnected: %v", r.err)
	} else if owner := socketOwner(t, r.ends, newPID); owner != newPID {
		t.Fatalf("reconnected: served by process %d (new %d)", owner, newPID)
	}
}

// TestUpgradeSuccessorDies: the new process takes over and then dies
// (SIGKILL) while the old one drains. The old process takes its sockets
// back and accepts again (HTTP/3 and TCP), the clients it kept never
// notice (same QUIC connection, same upstream connection), reload and
// upgrade reach it again, and a second upgrade succeeds.
func TestUpgradeSuccessorDies(t *testing.T) {
	upgradeTest(t, "builds roamgate")
	inBothModes(t, testUpgradeSuccessorDies)
}

func testUpgradeSuccessorDies(t *testing.T, mode string) {
	f := startUpgradeFixture(t, mode)
	addr := f.serving()
	oldPID := f.cmd.Process.Pid
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kept := &loadClient{id: 1, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer kept.conn.Close()
	first := kept.get(ctx)
	if first.err != nil {
		t.Fatal(first.err)
	}
	at := len(f.log())
	if err := f.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID, _ := strconv.Atoi(f.waitLog("handover", newProcessServes, at)[1])
	f.waitLog("drain", regexp.MustCompile(`draining: no new connections`), at)
	// A client of the new process, then the new process dies.
	theirs := &loadClient{id: 2, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer theirs.conn.Close()
	if r := theirs.get(ctx); r.err != nil || socketOwner(t, r.ends, oldPID, newPID) != newPID {
		t.Fatalf("a new client during the drain: %v", r.err)
	}
	if err := syscall.Kill(newPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	f.waitLog("resumption", regexp.MustCompile(`this one accepts new connections again`), at)

	// The kept client: the same connection, the same upstream one.
	if r := kept.get(ctx); r.err != nil || r.upstream != first.upstream {
		t.Fatalf("the old process's client after the new one died: %v over %v (was %v)", r.err, r.upstream, first.upstream)
	}
	if kept.conn.Context().Err() != nil {
		t.Fatal("the old process's client lost its QUIC connection")
	}
	// New clients, HTTP/3 and TCP, are the old process's again.
	fresh := &loadClient{id: 3, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer fresh.conn.Close()
	if r := fresh.get(ctx); r.err != nil {
		t.Fatalf("a new HTTP/3 client after the new process died: %v", r.err)
	} else if owner := socketOwner(t, r.ends, oldPID); owner != oldPID {
		t.Fatalf("a new HTTP/3 client served by process %d (old %d)", owner, oldPID)
	}
	for _, h2 := range []bool{true, false} {
		tctx, tcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		rs := tcpLoad(tctx, addr, f.dataDir, h2, func(e connEnds) int { return socketOwner(t, e, oldPID) })
		tcancel()
		if len(rs) == 0 {
			t.Fatal("no TCP request")
		}
		for _, r := range rs {
			if r.err != nil || r.owner != oldPID {
				t.Fatalf("a %s client after the new process died: %v (process %d)", r.proto, r.err, r.owner)
			}
		}
	}
	// Reload and upgrade reach the old process again.
	os.WriteFile(f.config, []byte(f.roamfile("2", f.apps[0].Addr()+" "+f.apps[1].Addr(), "")), 0o600)
	if err := run(ctx, []string{"reload", "--config", f.config}, io.Discard, io.Discard); err != nil {
		t.Fatalf("reload after the new process died: %v", err)
	}
	if r := fresh.get(ctx); r.err != nil || r.gen != "2" {
		t.Fatalf("after the reload: %v, X-Gen %q", r.err, r.gen)
	}
	if err := os.Rename(f.next, f.bin); err != nil { // the next version
		t.Fatal(err)
	}
	at = len(f.log())
	var out strings.Builder
	if err := run(ctx, []string{"upgrade", "--config", f.config}, &out, io.Discard); err != nil {
		t.Fatalf("a second upgrade: %v\n%s", err, f.log()[at:])
	}
	secondPID, _ := strconv.Atoi(f.waitLog("second handover", newProcessServes, at)[1])
	t.Cleanup(func() { stopProcess(secondPID) })
	if r := kept.get(ctx); r.err != nil || r.upstream != first.upstream {
		t.Fatalf("the kept client during the second drain: %v over %v (was %v)", r.err, r.upstream, first.upstream)
	}
	kept.conn.Close()
	fresh.conn.Close()
	theirs.conn.Close()
	f.waitExit("the old process did not exit after the second upgrade")
	last := &loadClient{id: 4, conn: dialEdge(t, addr, f.dataDir), addr: addr}
	defer last.conn.Close()
	if r := last.get(ctx); r.err != nil || socketOwner(t, r.ends, secondPID) != secondPID {
		t.Fatalf("after the second upgrade: %v", r.err)
	}
}

// TestUpgradeWithQUICLB: with quic_lb (encrypted server IDs, routable by a
// fleet's balancer), the process generation is still readable without the
// key, so an upgrade keeps the old process's connections there, across a
// migration during the drain, in both steering modes.
func TestUpgradeWithQUICLB(t *testing.T) {
	upgradeTest(t, "builds roamgate")
	const lb = "\tquic_lb {\n\t\tserver_id 0a0b\n\t\tnonce_len 10\n\t\tconfig_id 2\n\t\tkey 8f95f09245765f80256934e50c66207f\n\t}\n"
	inBothModes(t, func(t *testing.T, mode string) {
		f := startUpgradeFixtureWith(t, mode, "1m", lb)
		addr := f.serving()
		if !strings.Contains(f.log(), "connection ids routable (quic_lb)") {
			t.Fatal("quic_lb is not on")
		}
		oldPID := f.cmd.Process.Pid
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		clients := make([]*loadClient, 4)
		first := make([]upstreamConn, len(clients))
		for i := range clients {
			clients[i] = &loadClient{id: i, conn: dialEdge(t, addr, f.dataDir), addr: addr}
			defer clients[i].conn.Close()
			r := clients[i].get(ctx)
			if r.err != nil {
				t.Fatal(r.err)
			}
			first[i] = r.upstream
		}
		os.Rename(f.next, f.bin)
		at := len(f.log())
		if err := f.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		newPID, _ := strconv.Atoi(f.waitLog("handover", newProcessServes, at)[1])
		t.Cleanup(func() { stopProcess(newPID) })
		f.waitLog("drain", regexp.MustCompile(`draining: no new connections`), at)
		for i, c := range clients {
			mctx, mcancel := context.WithTimeout(ctx, 20*time.Second)
			err := c.conn.Migrate(mctx)
			mcancel()
			if err != nil {
				t.Fatalf("client %d: migrate: %v", i, err)
			}
			r := c.get(ctx)
			if r.err != nil || r.upstream != first[i] {
				t.Fatalf("client %d after migrating during the drain: %v over %v (was %v)", i, r.err, r.upstream, first[i])
			}
			if owner := socketOwner(t, r.ends, oldPID, newPID); owner != oldPID {
				t.Fatalf("client %d served by process %d (old %d)", i, owner, oldPID)
			}
		}
		fresh := &loadClient{id: 9, conn: dialEdge(t, addr, f.dataDir), addr: addr}
		defer fresh.conn.Close()
		if r := fresh.get(ctx); r.err != nil || socketOwner(t, r.ends, oldPID, newPID) != newPID {
			t.Fatalf("a new client: %v", r.err)
		}
	})
}

// stopProcess ends a process the test reaped as a subreaper (an upgrade's
// new process, whose parent has exited).
func stopProcess(pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	var ws syscall.WaitStatus
	for range 200 {
		if p, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); p == pid {
			return
		}
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	_, _ = syscall.Wait4(pid, &ws, 0, nil)
}
