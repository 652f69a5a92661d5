package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/quiclb"
	"github.com/roamgate/roamgate/proxy/quiclb/quiclbtest"
	"github.com/roamgate/roamgate/tlsmgr"
	"github.com/roamgate/roamgate/tlsmgr/redistest"
)

// fleetInstance is one `roamgate run` process of a fleet.
type fleetInstance struct {
	id      []byte // its quic_lb server ID
	cmd     *exec.Cmd
	addr    netip.AddrPort // its UDP port
	logPath string
	dataDir string
	config  string
	exited  chan error
}

func (in *fleetInstance) log() string {
	b, _ := os.ReadFile(in.logPath)
	return string(b)
}

const fleetRoamfile = `{
	default_bind 127.0.0.1
	data_dir %s
	handshake_rate 100000
	handshake_rate_per_ip 0
	quic_lb {
		server_id %s
		nonce_len 12
		config_id 1
	}
	shared_keys {
		secret %s
	}
	storage redis {
		address %s
		key_prefix fleet
	}
}
127.0.0.1:0 {
	reverse_proxy %s {
		lb_policy cookie lb
	}
}
`

// startFleet starts n instances of the freshly built roamgate, the same
// Roamfile apart from the server ID and the data directory (each
// instance's own control socket), with one shared secret and one Redis
// for the certificates.
func startFleet(t *testing.T, n int, backends string) []*fleetInstance {
	t.Helper()
	bins, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	redis := redistest.Start(t, redistest.Options{})
	root := t.TempDir()
	secret := hex.EncodeToString(bytes.Repeat([]byte{0x5e}, 32))
	var out []*fleetInstance
	for i := range n {
		in := &fleetInstance{id: []byte{byte(i + 1)}, exited: make(chan error, 1),
			dataDir: filepath.Join(root, fmt.Sprint("data", i)), logPath: filepath.Join(root, fmt.Sprint("roamgate", i, ".log"))}
		cfg := writeFile(t, root, fmt.Sprint("Roamfile", i), fmt.Sprintf(fleetRoamfile, in.dataDir, hex.EncodeToString(in.id), secret, redis.Addr(), backends))
		in.config = cfg
		logFile, err := os.Create(in.logPath)
		if err != nil {
			t.Fatal(err)
		}
		in.cmd = exec.Command(bins[0], "run", "--config", cfg, "--grace", "1s")
		in.cmd.Stdout, in.cmd.Stderr = logFile, logFile
		err = in.cmd.Start()
		logFile.Close()
		if err != nil {
			t.Fatal(err)
		}
		go func() { in.exited <- in.cmd.Wait() }()
		t.Cleanup(func() {
			_ = in.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-in.exited:
			case <-time.After(10 * time.Second):
				_ = in.cmd.Process.Kill()
			}
			if t.Failed() {
				t.Logf("instance %x log:\n%s", in.id, tail(in.log(), 40))
			}
		})
		out = append(out, in)
	}
	for _, in := range out {
		deadline := time.Now().Add(30 * time.Second)
		for {
			l := in.log()
			if m := listeningUDP.FindStringSubmatch(l); m != nil && strings.Contains(l, "serving") {
				in.addr = netip.MustParseAddrPort(m[1])
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %x does not serve:\n%s", in.id, l)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fleetClient is one client of the fleet test.
type fleetClient struct {
	conn     *h3client.Conn
	cookie   string
	home     upstreamConn // the backend and upstream connection of its first request
	instance int          // which instance served it (by its upstream socket)
}

// TestFleet (issue 15): three roamgate instances behind one address, the
// same Roamfile apart from the server ID, with shared keys. Behind a
// balancer that routes by the QUIC-LB server ID, 200 clients each
// migrate once: no request fails, no connection ends, every session stays
// on its instance with its upstream connections. Behind a balancer that
// hashes the 4-tuple (kube-proxy, most cloud balancers), the same
// migrations break most sessions: what roamgate prevents. Then an
// instance dies, and its clients come back on the others to the same
// backend, by their cookie.
func TestFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three roamgate processes and 200 clients")
	}
	for _, mode := range []string{"quic-lb", "4-tuple hash"} {
		t.Run(mode, func(t *testing.T) { testFleet(t, mode == "quic-lb") })
	}
}

func testFleet(t *testing.T, byCID bool) {
	apps := []*legacyapp.App{startLegacyApp(t, "app1"), startLegacyApp(t, "app2")}
	fleet := startFleet(t, 3, apps[0].Addr()+" "+apps[1].Addr())
	var servers []quiclbtest.Server
	for _, in := range fleet {
		servers = append(servers, quiclbtest.Server{ID: in.id, Addr: in.addr})
	}
	var codec *quiclb.Codec
	if byCID {
		var err error
		if codec, err = quiclb.NewCodec(quiclb.Config{ID: 1, ServerIDLen: 1, NonceLen: 12}); err != nil {
			t.Fatal(err)
		}
	}
	lb, err := quiclbtest.New(codec, servers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	// One local CA for the fleet, in Redis.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(fleetRoot(t, fleet[0]))
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	pids := make([]int, len(fleet))
	for i, in := range fleet {
		pids[i] = in.cmd.Process.Pid
	}
	instanceOf := func(remote connEnds) int {
		pid := socketOwner(t, remote, pids...)
		for i, p := range pids {
			if p == pid {
				return i
			}
		}
		return -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	get := func(c *h3client.Conn, cookie string) (result, string) {
		r := result{start: time.Now()}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, "GET", "https://127.0.0.1/", nil)
		if cookie != "" {
			req.Header.Set("Cookie", "lb="+cookie)
		}
		resp, err := c.RoundTrip(req)
		if err != nil {
			r.err = err
			return r, ""
		}
		defer resp.Body.Close()
		var lr legacyapp.Request
		if err := json.NewDecoder(resp.Body).Decode(&lr); err != nil || resp.StatusCode != 200 {
			r.err = fmt.Errorf("status %d: %v", resp.StatusCode, err)
			return r, ""
		}
		for _, ck := range resp.Cookies() {
			if ck.Name == "lb" {
				cookie = ck.Value
			}
		}
		r.upstream, r.ends = upstreamConn{lr.App, lr.Conn}, connEnds{lr.Remote, lr.Local}
		return r, cookie
	}

	const n = 200
	clients := make([]*fleetClient, n)
	parallel := func(f func(i int) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 40)
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = f(i)
			})
		}
		wg.Wait()
		return errs
	}
	for i, err := range parallel(func(i int) error {
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		c, err := h3client.Dial(dctx, lb.Addr().String(), tlsConf, nil)
		if err != nil {
			return err
		}
		r, cookie := get(c, "")
		if r.err != nil {
			c.Close()
			return r.err
		}
		clients[i] = &fleetClient{conn: c, cookie: cookie, home: r.upstream, instance: instanceOf(r.ends)}
		return nil
	}) {
		if err != nil {
			t.Fatalf("client %d before migrating: %v", i, err)
		}
	}
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	perInstance := map[int]int{}
	for _, c := range clients {
		perInstance[c.instance]++
	}
	if len(perInstance) != 3 || perInstance[-1] != 0 {
		t.Fatalf("clients by instance: %v (want all three)", perInstance)
	}

	// Every client migrates once, then sends two requests.
	start := time.Now()
	errs := parallel(func(i int) error {
		c := clients[i]
		// A migration on a path that works takes two round trips; a
		// client the balancer sends elsewhere waits out the timeout.
		mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
		defer mcancel()
		if err := c.conn.Migrate(mctx); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		for range 2 {
			r, _ := get(c.conn, "")
			switch {
			case r.err != nil:
				return r.err
			case r.upstream != c.home:
				return fmt.Errorf("upstream connection %v, was %v", r.upstream, c.home)
			case instanceOf(r.ends) != c.instance:
				return fmt.Errorf("served by instance %d, was %d", instanceOf(r.ends), c.instance)
			}
		}
		return nil
	})
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d clients over %v, each migrated once in %v: %d sessions broken", n, perInstance, time.Since(start).Round(time.Millisecond), failed)
	if !byCID {
		// The failure roamgate's routable IDs prevent: a migrated client
		// hashed to another instance loses its session (two in three, with
		// three instances).
		if failed < n/3 {
			t.Fatalf("only %d of %d sessions broke behind a 4-tuple balancer: the test does not show the failure", failed, n)
		}
		return
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	for i, c := range clients {
		if err := c.conn.Context().Err(); err != nil {
			t.Errorf("client %d: its connection ended", i)
		}
	}
	if t.Failed() {
		return
	}

	// An instance dies; the balancer's health check takes it out. Its
	// clients reconnect, land on the others, and their cookie brings them
	// to the same backend.
	dead := 0
	_ = fleet[dead].cmd.Process.Kill()
	<-fleet[dead].exited
	fleet[dead].exited <- nil
	lb.SetDown(fleet[dead].id, true)
	came := 0
	for i, c := range clients {
		if c.instance != dead {
			continue
		}
		c.conn.Close()
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		nc, err := h3client.Dial(dctx, lb.Addr().String(), tlsConf, nil)
		dcancel()
		if err != nil {
			t.Fatalf("client %d reconnecting: %v", i, err)
		}
		c.conn = nc
		r, _ := get(nc, c.cookie)
		if r.err != nil {
			t.Fatalf("client %d after its instance died: %v", i, r.err)
		}
		if r.upstream.app != c.home.app {
			t.Errorf("client %d: back on %s, its cookie names %s", i, r.upstream.app, c.home.app)
		}
		if in := instanceOf(r.ends); in == dead || in < 0 {
			t.Errorf("client %d served by instance %d", i, in)
		}
		came++
	}
	t.Logf("instance %x killed: %d clients reconnected to the others, each to its backend by cookie", fleet[dead].id, came)
}

// fleetRoot reads the fleet's local CA root from the storage the
// instance's Roamfile names (Redis).
func fleetRoot(t *testing.T, in *fleetInstance) []byte {
	t.Helper()
	cfg, err := configs.Load(in.config)
	if err != nil {
		t.Fatal(err)
	}
	storage, err := tlsmgr.NewStorage(tlsmgr.ConfigFor(cfg, ""))
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := storage.(io.Closer); ok {
		defer c.Close()
	}
	for range 500 {
		if b, err := storage.Load(t.Context(), "local_ca/local/root.crt"); err == nil {
			return b
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no local CA root in the storage")
	return nil
}
