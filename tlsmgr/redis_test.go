package tlsmgr

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/roamgate/roamgate/tlsmgr/acmetest"
	"github.com/roamgate/roamgate/tlsmgr/redisstore"
	"github.com/roamgate/roamgate/tlsmgr/redistest"
)

// testLockTTL is the lock TTL of the fleets of these tests: short, so
// that a dead holder's lock expires within the test.
const testLockTTL = 2 * time.Second

// redisFleet is the setting of several Managers that share one Redis
// storage and one Pebble CA: as behind a load balancer, Pebble's HTTP-01
// validations reach one plain-HTTP listener that hands each request to the
// next instance in turn, so a challenge is often answered by an instance
// that did not order the certificate, from the shared storage.
type redisFleet struct {
	ca     *acmetest.CA
	redis  *redistest.Server
	httpLn net.Listener
	prefix string // the fleet's key prefix

	mu       sync.Mutex // guards handlers
	handlers []http.Handler
	next     atomic.Uint64
}

func newRedisFleet(t *testing.T) *redisFleet { return newRedisFleetValidity(t, 0) }

// newRedisFleetValidity is newRedisFleet with certificates valid that long
// (0: Pebble's default).
func newRedisFleetValidity(t *testing.T, validity time.Duration) *redisFleet {
	t.Helper()
	f := &redisFleet{redis: redistest.Start(t, redistest.Options{}), httpLn: listenTCP(t), prefix: "fleet-" + uniqueName("t")}
	f.ca = acmetest.Start(t, acmetest.Options{HTTPPort: tcpPort(f.httpLn), Validity: validity})
	serveHTTP(t, f.httpLn, http.HandlerFunc(f.serveChallenge))
	return f
}

// serveChallenge hands r to the instances in turn.
func (f *redisFleet) serveChallenge(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	hs := f.handlers
	f.mu.Unlock()
	if len(hs) == 0 {
		http.Error(w, "no instance", http.StatusServiceUnavailable)
		return
	}
	hs[f.next.Add(1)%uint64(len(hs))].ServeHTTP(w, r)
}

// instance is one Manager of a fleet and the address of its TLS listener.
type instance struct {
	m    *Manager
	addr string
	reg  *prometheus.Registry
}

// config returns the Config of an instance that serves names and reaches
// Redis at redisAddr (the fleet's server, or a proxy to it).
func (f *redisFleet) config(t *testing.T, redisAddr string, names ...string) Config {
	t.Helper()
	return Config{
		DataDir: t.TempDir(), // the instance's own; no certificate goes there
		Redis:   &Redis{Address: redisAddr, KeyPrefix: f.prefix, LockTTL: testLockTTL},
		Sites:   []Site{{Names: names}},
		ACME: ACME{
			CA:                      f.ca.DirectoryURL(),
			Email:                   "ops@example.com",
			CARootFile:              f.ca.ClientRootsFile(t),
			DisableTLSALPNChallenge: true, // one HTTP-01 listener for the fleet
		},
		HTTPPort:   tcpPort(f.httpLn),
		TLSPort:    tcpPort(listenTCP(t)), // another port; TLS-ALPN-01 is off
		ListenHost: "127.0.0.1",
	}
}

// start creates an instance for cfg, logging to logger, joins it to the
// challenge rotation and starts it.
func (f *redisFleet) start(t *testing.T, cfg Config, logger *zap.Logger) *instance {
	t.Helper()
	in := &instance{reg: prometheus.NewRegistry()}
	cfg.Registerer = in.reg
	m, err := New(cfg, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Stop)
	in.m = m
	f.mu.Lock()
	f.handlers = append(f.handlers, m.HTTPChallengeHandler(http.NotFoundHandler()))
	f.mu.Unlock()
	in.addr = serveHandshakes(t, tls.NewListener(listenTCP(t), m.TLSConfig()))
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return in
}

// serial returns the serial of the leaf a handshake for name gets from
// addr, verified against roots; "" and the error when none verifies.
func serial(t *testing.T, addr, name string, roots *x509.CertPool) (string, error) {
	t.Helper()
	st, err := handshake(t, addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return "", err
	}
	return st.PeerCertificates[0].SerialNumber.String(), nil
}

// sameSerial waits until every instance of fleet serves a certificate for
// name that verifies against roots, and checks they all serve one serial.
func sameSerial(t *testing.T, fleet []*instance, name string, roots *x509.CertPool) {
	t.Helper()
	var first string
	for i, in := range fleet {
		s := waitForCert(t, in.addr, name, roots).SerialNumber.String()
		if i == 0 {
			first = s
		} else if s != first {
			t.Errorf("%s: instance %d serves serial %s, instance 0 %s", name, i, s, first)
		}
	}
}

// TestRedisFleetOrdersOnce: three instances that start together with one
// Redis storage order each name once between them (Pebble counts the
// orders), all serve the same certificate (the serials of their
// handshakes) and share one local CA; with Redis then killed, they keep
// serving the certificates they hold, count the storage's errors, hold a
// new name's issuance until Redis is back (then order it once), and use
// the storage again.
func TestRedisFleetOrdersOnce(t *testing.T) {
	f := newRedisFleet(t)
	names := []string{uniqueName("shop"), uniqueName("api")}
	var fleet []*instance
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := time.Now()
	for range 3 {
		cfg := f.config(t, f.redis.Addr(), names...)
		wg.Go(func() {
			in := f.start(t, cfg, testLogger(t))
			mu.Lock()
			fleet = append(fleet, in)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(fleet) != 3 {
		t.FailNow()
	}
	roots := f.ca.IssuingRoots()
	for _, name := range names {
		sameSerial(t, fleet, name, roots)
		if n := f.ca.Orders(name); n != 1 {
			t.Errorf("%s: Pebble got %d orders from the three instances, want 1", name, n)
		}
	}
	t.Logf("three instances serve %d names, %d order(s) each, %s after they started",
		len(names), f.ca.Orders(names[0]), time.Since(start).Round(time.Millisecond))
	for i, in := range fleet[1:] {
		if !in.m.LocalCA().root.Equal(fleet[0].m.LocalCA().root) {
			t.Errorf("instance %d has a local CA of its own", i+1)
		}
	}

	// Redis dies: handshakes are served from memory as before.
	serials := map[string]string{}
	for _, name := range names {
		serials[name], _ = serial(t, fleet[0].addr, name, roots)
	}
	f.redis.Kill(t)
	for i, in := range fleet {
		for _, name := range names {
			if s, err := serial(t, in.addr, name, roots); err != nil || s != serials[name] {
				t.Errorf("with Redis down, instance %d for %s: serial %s, %v; want %s", i, name, s, err, serials[name])
			}
		}
	}
	ctx := t.Context()
	if _, err := SharedSecret(ctx, fleet[0].m.storage); err == nil {
		t.Error("the storage answered with Redis down")
	}
	if n := storageErrorCount(t, fleet[0].reg); n == 0 {
		t.Error("roamgate_storage_errors_total did not count the failed commands")
	}

	// A name added while Redis is down: its issuance waits for the
	// storage's lock, and nothing is ordered meanwhile.
	late := uniqueName("late")
	for i, in := range fleet {
		c := in.m.settings
		c.Sites = []Site{{Names: append(slices.Clone(names), late)}}
		if err := in.m.Update(ctx, c); err != nil {
			t.Fatalf("instance %d: adding a name with Redis down: %v", i, err)
		}
	}
	time.Sleep(time.Second)
	if n := f.ca.Orders(late); n != 0 {
		t.Errorf("%d orders for %s with Redis down: issuance must wait for the lock", n, late)
	}

	// Redis is back (empty: it persisted nothing); the same storage works.
	f.redis.Restart(t)
	back := time.Now()
	sameSerial(t, fleet, late, roots)
	if n := f.ca.Orders(late); n != 1 {
		t.Errorf("%s: %d orders once Redis was back, want 1", late, n)
	}
	t.Logf("a name added with Redis down: served by all three %s after Redis came back, %d order(s)",
		time.Since(back).Round(time.Millisecond), f.ca.Orders(late))
	waitFor(t, 10*time.Second, "the storage to answer after Redis came back", func() bool {
		_, err := SharedSecret(ctx, fleet[0].m.storage)
		return err == nil
	})
	a, _ := SharedSecret(ctx, fleet[0].m.storage)
	b, err := SharedSecret(ctx, fleet[2].m.storage)
	if err != nil || !bytes.Equal(a, b) {
		t.Errorf("after the restart two instances read different shared secrets (%v)", err)
	}
	for i, in := range fleet {
		if s, err := serial(t, in.addr, names[0], roots); err != nil || s != serials[names[0]] {
			t.Errorf("after Redis came back, instance %d: serial %s, %v", i, s, err)
		}
	}
}

// TestRedisFleetRenewsOnce: when a certificate three instances share
// falls due, one of them renews it (Pebble gets one more order) and the
// renewed certificate reaches the other two from the storage: all three
// serve its serial.
func TestRedisFleetRenewsOnce(t *testing.T) {
	f := newRedisFleetValidity(t, 30*time.Second)
	name := uniqueName("renew")
	var fleet []*instance
	for range 3 {
		cfg := f.config(t, f.redis.Addr(), name)
		cfg.RenewalWindowRatio = 0.8 // due 6 s after issuance
		cfg.RenewCheckInterval = 200 * time.Millisecond
		fleet = append(fleet, f.start(t, cfg, testLogger(t)))
	}
	roots := f.ca.IssuingRoots()
	first := waitForCert(t, fleet[0].addr, name, roots)
	for i, in := range fleet[1:] {
		if s := waitForCert(t, in.addr, name, roots); s.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatalf("instance %d serves serial %s, instance 0 %s", i+1, s.SerialNumber, first.SerialNumber)
		}
	}
	issued := time.Now()
	var renewed string
	waitFor(t, 20*time.Second, "all three to serve one renewed certificate", func() bool {
		var serials []string
		for _, in := range fleet {
			s, err := serial(t, in.addr, name, roots)
			if err != nil || s == first.SerialNumber.String() {
				return false
			}
			serials = append(serials, s)
		}
		renewed = serials[0]
		return serials[1] == renewed && serials[2] == renewed
	})
	if n := f.ca.Orders(name); n != 2 {
		t.Errorf("Pebble got %d orders for %s (the first and the renewal), want 2", n, name)
	}
	t.Logf("renewed once by one of three instances, served by all %v after the first was issued (2 orders)", time.Since(issued).Round(time.Millisecond))
}

// storageErrorCount sums roamgate_storage_errors_total in reg.
func storageErrorCount(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "roamgate_storage_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

// TestRedisFleetLockHolderDies: the instance that holds a name's lock is
// cut off from Redis in the middle of its order (while its challenge is
// being solved) and stopped, as a killed process would be. The lock it
// leaves expires after the TTL; another instance then orders the
// certificate, and both survivors serve it.
func TestRedisFleetLockHolderDies(t *testing.T) {
	f := newRedisFleet(t)
	name := uniqueName("shop")
	proxy := redistest.NewProxy(t, f.redis.Addr())
	var cutAt atomic.Int64 // Unix nanoseconds
	cut := make(chan struct{})
	hook := newHookCore(func(e zapcore.Entry, fields []zapcore.Field) {
		if e.Message != "trying to solve challenge" || !hasValue(fields, name) {
			return
		}
		if cutAt.CompareAndSwap(0, time.Now().UnixNano()) {
			proxy.Cut() // before the challenge is presented in the storage
			close(cut)
		}
	})
	holder := f.start(t, f.config(t, proxy.Addr(), name), acmetest.Logger(t, zap.WarnLevel, hook))
	select {
	case <-cut:
	case <-time.After(30 * time.Second):
		t.Fatal("the first instance did not start solving a challenge within 30s")
	}
	holder.m.Stop() // dead: it neither extends nor releases its lock
	probe, err := redisstore.New(redisstore.Options{Address: f.redis.Addr(), KeyPrefix: f.prefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := probe.TryLock(t.Context(), "issue_cert_"+name); ok || err != nil {
		t.Fatalf("right after the holder died its lock was free (%t, %v), so nothing here tests the expiry", ok, err)
	}
	_ = probe.Close()

	var survivors []*instance
	for range 2 {
		survivors = append(survivors, f.start(t, f.config(t, f.redis.Addr(), name), testLogger(t)))
	}
	roots := f.ca.IssuingRoots()
	var serials []string
	for _, in := range survivors {
		serials = append(serials, waitForCert(t, in.addr, name, roots).SerialNumber.String())
	}
	took := time.Since(time.Unix(0, cutAt.Load()))
	t.Logf("the holder died mid-order; the survivors served %s %s later (lock ttl %s); Pebble got %d orders",
		name, took.Round(time.Millisecond), testLockTTL, f.ca.Orders(name))
	if serials[0] != serials[1] {
		t.Errorf("the survivors serve serials %s and %s", serials[0], serials[1])
	}
	if took < testLockTTL/2 {
		t.Errorf("served %s after the holder died, before its lock (ttl %s) could have expired", took, testLockTTL)
	}
	if n := f.ca.Orders(name); n != 2 {
		t.Errorf("Pebble got %d orders, want 2: the dead holder's, and the one that finished", n)
	}
	if s, err := serial(t, holder.addr, name, roots); err == nil {
		t.Errorf("the dead holder serves %s (serial %s)", name, s)
	}
}

// hookCore is a zapcore.Core that calls fn with each entry.
type hookCore struct {
	fn     func(zapcore.Entry, []zapcore.Field)
	fields []zapcore.Field
}

func newHookCore(fn func(zapcore.Entry, []zapcore.Field)) zapcore.Core { return &hookCore{fn: fn} }

func (c *hookCore) Enabled(zapcore.Level) bool { return true }
func (c *hookCore) With(fields []zapcore.Field) zapcore.Core {
	return &hookCore{fn: c.fn, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}
func (c *hookCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	return ce.AddCore(e, c)
}
func (c *hookCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	c.fn(e, append(append([]zapcore.Field(nil), c.fields...), fields...))
	return nil
}
func (c *hookCore) Sync() error { return nil }

// hasValue reports whether a field's value, as text, contains s.
func hasValue(fields []zapcore.Field, s string) bool {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	for _, v := range enc.Fields {
		if str, ok := v.(string); ok && strings.Contains(str, s) {
			return true
		}
		if strs, ok := v.([]any); ok {
			for _, x := range strs {
				if str, ok := x.(string); ok && strings.Contains(str, s) {
					return true
				}
			}
		}
	}
	return false
}

// TestRedisConfigChecks: the Redis settings New and Validate refuse.
func TestRedisConfigChecks(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    Redis
		want string
	}{
		{"no port", Redis{Address: "redis"}, `address "redis": want host:port`},
		{"two passwords", Redis{Address: "r:1", Password: "a", PasswordFile: "/p"}, "one source"},
		{"tls ca without tls", Redis{Address: "r:1", TLSCAFile: "/ca.pem"}, "without TLS"},
		{"missing ca", Redis{Address: "r:1", TLS: true, TLSCAFile: "/nonexistent/ca.pem"}, `ca "/nonexistent/ca.pem"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(Config{Redis: &tt.r})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
	if err := Validate(Config{Redis: &Redis{Address: "127.0.0.1:6379"}}); err != nil {
		t.Errorf("Validate of Redis without a data directory = %v, want nil (the data directory is not needed for certificates)", err)
	}
}

// TestRedisPasswordFile: the password comes from the file, without its
// newline; a wrong one fails New with the server's reason.
func TestRedisPasswordFile(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Password: "from-file"})
	dir := t.TempDir()
	good, bad := dir+"/good", dir+"/bad"
	writeFile(t, good, []byte("from-file\n"))
	writeFile(t, bad, []byte("wrong\n"))
	m := newTestManager(t, Config{Redis: &Redis{Address: srv.Addr(), PasswordFile: good}, Sites: []Site{{Names: []string{"localhost"}}}})
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start with the password file: %v", err)
	}
	if _, err := New(Config{Redis: &Redis{Address: srv.Addr(), PasswordFile: bad}}, testLogger(t)); err == nil ||
		!strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("New with a wrong password = %v, want the server's WRONGPASS", err)
	}
}

// TestRedisStorageErrorsMetric: the counter is registered on the
// Registerer by operation, at 0, and shared by managers that share it.
func TestRedisStorageErrorsMetric(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	reg := prometheus.NewRegistry()
	for range 2 {
		newTestManager(t, Config{Redis: &Redis{Address: srv.Addr(), KeyPrefix: uniqueName("m")}, Registerer: reg})
	}
	n, err := testutil.GatherAndCount(reg, "roamgate_storage_errors_total")
	if err != nil || n != 9 {
		t.Errorf("roamgate_storage_errors_total has %d series (%v), want 9 (one per operation)", n, err)
	}
}
