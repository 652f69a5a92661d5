package redisstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/tlsmgr/redistest"
	"github.com/roamgate/roamgate/tlsmgr/tlstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.IgnoreGoroutines...)
}

// newStorage returns a Storage on srvAddr with opts (Address set), closed
// when the test ends, and its error counter.
func newStorage(t *testing.T, opts Options, logger *zap.Logger) (*Storage, *prometheus.CounterVec) {
	t.Helper()
	if logger == nil {
		logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roamgate_storage_errors_total"}, []string{"op"})
	opts.Errors = errs
	s, err := New(opts, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, errs
}

// total sums the counter over its operations.
func total(errs *prometheus.CounterVec) float64 {
	var n float64
	for _, op := range ops {
		n += testutil.ToFloat64(errs.WithLabelValues(op))
	}
	return n
}

// TestStorageSemantics checks the certmagic.Storage contract as
// certmagic's FileStorage keeps it: values round-trip, a missing key is
// fs.ErrNotExist, a key with keys under it is a directory for Exists,
// Stat, List and Delete, and nothing is seen across key prefixes.
func TestStorageSemantics(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s, errs := newStorage(t, Options{Address: srv.Addr(), KeyPrefix: "semantics"}, nil)
	ctx := t.Context()

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	values := map[string]string{
		"certificates/ca/a.example.com/a.example.com.crt": "cert a",
		"certificates/ca/a.example.com/a.example.com.key": "key a",
		"certificates/ca/b.example.com/b.example.com.crt": "cert b",
		"certificates/ca*/x.crt":                          "a star in the key",
		"acme/ca/users/ops@example.com/ops.json":          "account",
		"top":                                             "a value at the top",
		"empty":                                           "",
	}
	for k, v := range values {
		must(s.Store(ctx, k, []byte(v)))
	}
	after := time.Now()
	for k, v := range values {
		got, err := s.Load(ctx, k)
		if err != nil || string(got) != v {
			t.Errorf("Load(%q) = %q, %v; want %q", k, got, err, v)
		}
	}
	must(s.Store(ctx, "top", []byte("replaced")))
	if got, _ := s.Load(ctx, "top"); string(got) != "replaced" {
		t.Errorf("Load after overwrite = %q", got)
	}
	binary := []byte{0, 1, 2, 0xff, '\r', '\n'}
	must(s.Store(ctx, "binary", binary))
	if got, _ := s.Load(ctx, "binary"); !bytes.Equal(got, binary) {
		t.Errorf("binary value came back as %x", got)
	}

	for _, k := range []string{"missing", "certificates/ca/a.example.com/missing", "certificates/c"} {
		if _, err := s.Load(ctx, k); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load(%q) = %v, want fs.ErrNotExist", k, err)
		}
		if _, err := s.Stat(ctx, k); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(%q) = %v, want fs.ErrNotExist", k, err)
		}
		if s.Exists(ctx, k) {
			t.Errorf("Exists(%q) = true", k)
		}
	}
	for _, k := range []string{"top", "certificates", "certificates/ca", "certificates/ca/a.example.com", "certificates/ca*", "empty"} {
		if !s.Exists(ctx, k) {
			t.Errorf("Exists(%q) = false", k)
		}
	}

	info, err := s.Stat(ctx, "certificates/ca/a.example.com/a.example.com.key")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "certificates/ca/a.example.com/a.example.com.key" || info.Size != int64(len("key a")) || !info.IsTerminal ||
		info.Modified.Before(before) || info.Modified.After(after) {
		t.Errorf("Stat = %+v; want size %d, terminal, modified within [%s, %s]", info, len("key a"), before, after)
	}
	if info, err := s.Stat(ctx, "empty"); err != nil || info.Size != 0 || !info.IsTerminal {
		t.Errorf("Stat(empty) = %+v, %v", info, err)
	}
	if info, err := s.Stat(ctx, "certificates/ca"); err != nil || info.IsTerminal {
		t.Errorf("Stat(directory) = %+v, %v; want IsTerminal false", info, err)
	}

	lists := []struct {
		prefix    string
		recursive bool
		want      []string
	}{
		{"certificates", false, []string{"certificates/ca", "certificates/ca*"}},
		{"certificates/", false, []string{"certificates/ca", "certificates/ca*"}},
		{"certificates/ca", false, []string{"certificates/ca/a.example.com", "certificates/ca/b.example.com"}},
		{"certificates/ca/a.example.com", false, []string{"certificates/ca/a.example.com/a.example.com.crt", "certificates/ca/a.example.com/a.example.com.key"}},
		{"certificates/ca", true, []string{
			"certificates/ca/a.example.com", "certificates/ca/a.example.com/a.example.com.crt", "certificates/ca/a.example.com/a.example.com.key",
			"certificates/ca/b.example.com", "certificates/ca/b.example.com/b.example.com.crt",
		}},
		{"acme", true, []string{"acme/ca", "acme/ca/users", "acme/ca/users/ops@example.com", "acme/ca/users/ops@example.com/ops.json"}},
		{"", false, []string{"acme", "binary", "certificates", "empty", "top"}},
		{"top", false, nil}, // a value, no directory
	}
	for _, l := range lists {
		got, err := s.List(ctx, l.prefix, l.recursive)
		if err != nil || !slices.Equal(got, l.want) {
			t.Errorf("List(%q, %t) = %q, %v; want %q", l.prefix, l.recursive, got, err, l.want)
		}
	}
	if _, err := s.List(ctx, "nothing/here", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List(missing) = %v, want fs.ErrNotExist", err)
	}

	// Delete: a value, a directory with everything under it (not its
	// sibling "ca*"), and a missing key.
	must(s.Delete(ctx, "certificates/ca/b.example.com/b.example.com.crt"))
	if s.Exists(ctx, "certificates/ca/b.example.com") {
		t.Error("a directory whose last key was deleted still exists")
	}
	must(s.Delete(ctx, "certificates/ca"))
	for _, k := range []string{"certificates/ca", "certificates/ca/a.example.com/a.example.com.crt"} {
		if s.Exists(ctx, k) {
			t.Errorf("Exists(%q) after deleting its directory", k)
		}
	}
	if got, err := s.Load(ctx, "certificates/ca*/x.crt"); err != nil || string(got) != values["certificates/ca*/x.crt"] {
		t.Errorf("Delete(certificates/ca) took its sibling certificates/ca*: %q, %v", got, err)
	}
	must(s.Delete(ctx, "never/was"))

	// Another prefix on the same server sees none of it.
	other, _ := newStorage(t, Options{Address: srv.Addr(), KeyPrefix: "other"}, nil)
	if other.Exists(ctx, "top") {
		t.Error("a storage with another key prefix sees the key")
	}
	if _, err := other.List(ctx, "", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List on another prefix = %v, want fs.ErrNotExist", err)
	}
	otherDB, _ := newStorage(t, Options{Address: srv.Addr(), KeyPrefix: "semantics", DB: 1}, nil)
	if otherDB.Exists(ctx, "top") {
		t.Error("a storage on another database sees the key")
	}
	if n := testutil.CollectAndCount(errs); n != len(ops) {
		t.Errorf("error counter has %d series, want one per operation (%d)", n, len(ops))
	}
	if got := total(errs); got != 0 {
		t.Errorf("%v storage errors, want 0", got)
	}
}

// TestListAndDeleteManyKeys: SCAN takes several rounds over a prefix of
// thousands of keys, and List and Delete see them all.
func TestListAndDeleteManyKeys(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s, _ := newStorage(t, Options{Address: srv.Addr()}, nil)
	ctx := t.Context()
	const n = 2500
	for i := range n {
		if err := s.Store(ctx, fmt.Sprintf("many/%04d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store(ctx, "manyother", []byte("a sibling")); err != nil {
		t.Fatal(err)
	}
	keys, err := s.List(ctx, "many", false)
	if err != nil || len(keys) != n || keys[0] != "many/0000" || keys[n-1] != fmt.Sprintf("many/%04d", n-1) {
		t.Fatalf("List = %d keys (%v); want %d", len(keys), err, n)
	}
	if err := s.Delete(ctx, "many"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "many") || !s.Exists(ctx, "manyother") {
		t.Error("Delete(many) left keys under it, or took its sibling")
	}
}

// TestLockMutualExclusion: two instances (Storages) and two goroutines of
// each lock the same name over and over; never are two inside at once.
func TestLockMutualExclusion(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	a, _ := newStorage(t, Options{Address: srv.Addr()}, nil)
	b, _ := newStorage(t, Options{Address: srv.Addr()}, nil)
	var inside, entries, overlaps atomic.Int32
	var wg sync.WaitGroup
	for _, s := range []*Storage{a, b, a, b} {
		wg.Go(func() {
			for range 25 {
				if err := s.Lock(t.Context(), "issue_cert_a.example.com"); err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				entries.Add(1)
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				if err := s.Unlock(t.Context(), "issue_cert_a.example.com"); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if overlaps.Load() != 0 || entries.Load() != 100 {
		t.Errorf("%d of %d critical sections overlapped", overlaps.Load(), entries.Load())
	}
}

// TestLockKeptWhileHeld: a holder keeps its lock for many TTLs by
// extending it; the waiter gets it as soon as it is released.
func TestLockKeptWhileHeld(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const ttl = 300 * time.Millisecond
	a, _ := newStorage(t, Options{Address: srv.Addr(), LockTTL: ttl}, nil)
	b, _ := newStorage(t, Options{Address: srv.Addr(), LockTTL: ttl}, nil)
	ctx := t.Context()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "l"); ok || err != nil {
		t.Fatalf("TryLock of a held lock = %t, %v", ok, err)
	}
	if err := b.Unlock(ctx, "l"); err == nil {
		t.Error("Unlock of a lock another instance holds succeeded")
	}
	waitCtx, cancel := context.WithTimeout(ctx, 4*ttl)
	defer cancel()
	if err := b.Lock(waitCtx, "l"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while held for 4 TTLs = %v, want the context's deadline", err)
	}
	released := time.Now()
	if err := a.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	t.Logf("the waiter had the lock %s after its release", time.Since(released).Round(time.Millisecond))
	if err := b.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// TestLockExpiresWhenHolderDies: a holder that can no longer reach Redis
// (killed, or cut off) stops extending its lock, which another instance
// then takes within about a TTL; the old holder's Unlock, once it can reach
// Redis again, reports the loss and leaves the new holder's lock alone.
func TestLockExpiresWhenHolderDies(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	const ttl = time.Second
	proxy := redistest.NewProxy(t, srv.Addr())
	core, logs := observer.New(zap.InfoLevel)
	holder, holderErrs := newStorage(t, Options{Address: proxy.Addr(), LockTTL: ttl}, zap.New(core))
	waiter, _ := newStorage(t, Options{Address: srv.Addr(), LockTTL: ttl}, nil)
	ctx := t.Context()
	if err := holder.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	cut := time.Now()
	if err := waiter.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(cut)
	t.Logf("the lock was taken over %s after its holder was cut off (ttl %s)", took.Round(time.Millisecond), ttl)
	if took < ttl*2/3 || took > 2*ttl {
		t.Errorf("taken over after %s; want about the ttl, %s (less the last extension's age)", took, ttl)
	}
	proxy.Heal()
	if err := holder.Unlock(ctx, "l"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("the old holder's Unlock = %v, want an error about its expiry", err)
	}
	if ok, _ := holder.TryLock(ctx, "l"); ok {
		t.Fatal("the old holder's Unlock released the new holder's lock")
	}
	if testutil.ToFloat64(holderErrs.WithLabelValues("refresh")) == 0 {
		t.Error("no refresh error counted for the holder")
	}
	if logs.FilterMessage("redis storage").Len() == 0 && logs.FilterMessage("redis storage: lock expired while held").Len() == 0 {
		t.Error("nothing logged of the failed refreshes")
	}
	if err := waiter.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
}

// TestCloseReleasesLocks: a Storage that closes releases what it holds,
// so that another instance need not wait for the TTL.
func TestCloseReleasesLocks(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	a, err := New(Options{Address: srv.Addr()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newStorage(t, Options{Address: srv.Addr()}, nil)
	if err := a.Lock(t.Context(), "l"); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(t.Context(), "l"); !ok || err != nil {
		t.Fatalf("TryLock after the holder closed = %t, %v", ok, err)
	}
	if err := a.Store(t.Context(), "k", nil); err == nil {
		t.Error("Store after Close succeeded")
	}
	if err := a.Lock(t.Context(), "m"); err == nil {
		t.Error("Lock after Close succeeded")
	}
	if err := b.Unlock(t.Context(), "l"); err != nil {
		t.Fatal(err)
	}
}

// TestRedisKilledAndRestarted: while Redis is down every command fails
// (counted by operation and logged) and Lock waits, within its context;
// once Redis is back the same Storage works again without being rebuilt.
func TestRedisKilledAndRestarted(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	core, logs := observer.New(zap.WarnLevel)
	s, errs := newStorage(t, Options{Address: srv.Addr(), DialTimeout: time.Second}, zap.New(core))
	ctx := t.Context()
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	srv.Kill(t)

	start := time.Now()
	if err := s.Store(ctx, "k", []byte("w")); err == nil {
		t.Error("Store with Redis down succeeded")
	}
	t.Logf("a Store with Redis down failed after %s", time.Since(start).Round(time.Millisecond))
	if _, err := s.Load(ctx, "k"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load with Redis down = %v, want an error other than fs.ErrNotExist", err)
	}
	if _, err := s.List(ctx, "", true); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List with Redis down = %v", err)
	}
	if s.Exists(ctx, "k") {
		t.Error("Exists with Redis down = true")
	}
	lockCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := s.Lock(lockCtx, "l"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock with Redis down = %v, want the context's deadline", err)
	}
	for _, op := range []string{"store", "load", "list", "exists", "lock"} {
		if testutil.ToFloat64(errs.WithLabelValues(op)) == 0 {
			t.Errorf("no %s error counted", op)
		}
	}
	if logs.FilterMessage("redis storage").Len() == 0 || logs.FilterMessage("redis storage: waiting for lock").Len() != 1 {
		t.Errorf("logged %d command errors and %d lock waits; want some and one",
			logs.FilterMessage("redis storage").Len(), logs.FilterMessage("redis storage: waiting for lock").Len())
	}

	// A Lock that waits through the outage gets the lock once Redis is
	// back (empty: nothing was persisted).
	locked := make(chan error, 1)
	go func() { locked <- s.Lock(ctx, "l") }()
	time.Sleep(200 * time.Millisecond) // let it fail a few times
	srv.Restart(t)
	select {
	case err := <-locked:
		if err != nil {
			t.Fatalf("Lock across the outage: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock did not get the lock within 10s of Redis coming back")
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "k", []byte("after")); err != nil {
		t.Fatalf("Store after the restart: %v", err)
	}
	if got, err := s.Load(ctx, "k"); err != nil || string(got) != "after" {
		t.Fatalf("Load after the restart = %q, %v", got, err)
	}
}

// TestPassword: a server with requirepass refuses a client without the
// password or with a wrong one, and serves one with it.
func TestPassword(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Password: "s3cret"})
	for _, tt := range []struct {
		name, username, password string
		ok                       bool
	}{
		{"none", "", "", false},
		{"wrong", "", "guess", false},
		{"right", "", "s3cret", true},
		{"default user", "default", "s3cret", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newStorage(t, Options{Address: srv.Addr(), Username: tt.username, Password: tt.password}, zap.NewNop())
			err := s.Store(t.Context(), "k", []byte("v"))
			if (err == nil) != tt.ok {
				t.Fatalf("Store = %v, want success %t", err, tt.ok)
			}
			if perr := s.Ping(t.Context()); (perr == nil) != tt.ok {
				t.Errorf("Ping = %v", perr)
			}
		})
	}
}

// TestTLS: a server that speaks TLS only, with a certificate from a test
// CA, serves a client that trusts the CA and checks the name; a client
// that does not trust it fails.
func TestTLS(t *testing.T) {
	if !redistest.SupportsTLS(t) {
		t.Skip("this redis-server was built without TLS (no --tls-port)")
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "redis-ca")
	cert, key := tlstest.WriteKeyPair(t, dir, "redis", ca.IssueServer(t, "redis.internal", "127.0.0.1"))
	srv := redistest.Start(t, redistest.Options{CertFile: cert, KeyFile: key, Password: "pw"})

	s, _ := newStorage(t, Options{Address: srv.Addr(), Password: "pw",
		TLS: &tls.Config{RootCAs: ca.Pool(), ServerName: "redis.internal", MinVersion: tls.VersionTLS12}}, nil)
	if err := s.Store(t.Context(), "k", []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(t.Context(), "k"); err != nil || string(got) != "over tls" {
		t.Fatalf("Load = %q, %v", got, err)
	}

	other := tlstest.NewCA(t, filepath.Join(dir), "other-ca")
	bad, _ := newStorage(t, Options{Address: srv.Addr(), Password: "pw",
		TLS: &tls.Config{RootCAs: other.Pool(), ServerName: "redis.internal"}}, zap.NewNop())
	if err := bad.Ping(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("Ping with an untrusted server certificate = %v, want a certificate error", err)
	}
	plain, _ := newStorage(t, Options{Address: srv.Addr(), Password: "pw", DialTimeout: time.Second}, zap.NewNop())
	if err := plain.Ping(t.Context()); err == nil {
		t.Error("a plain-TCP client talked to the TLS-only server")
	}
}

// TestNewRefuses: the options New checks.
func TestNewRefuses(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{}, "no address"},
		{Options{Address: "127.0.0.1:1", DB: -1}, "negative"},
		{Options{Address: "127.0.0.1:1", LockTTL: time.Millisecond}, "shorter than 100ms"},
	} {
		if _, err := New(tt.opts, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
}
