package acmetest

import (
	"bytes"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// IgnoreCertmagicGoroutines are the goleak options for goroutines certmagic
// starts and never owns to a Manager, for the TestMain of every package
// whose tests manage certificates:
//
//   - the FileStorage lock refresher: every FileStorage.Lock starts one that
//     rewrites the lock file every 5 s and notices the release only at its
//     next wake-up, so it outlives Unlock (and Cache.Stop) by up to 5 s;
//   - the ACME rate limiters: one per CA directory and account email,
//     process-wide, never stopped (certmagic's acmeclient.go: "TODO: stop
//     rate limiter when it is garbage-collected"); each test's CA has a
//     directory URL of its own, so each leaves one.
var IgnoreCertmagicGoroutines = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
	goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*RingBufferRateLimiter).loop"),
}

// Logger returns a logger for code under test that manages certificates:
// entries of level and above go to t.Log, every entry to the extra cores (an
// observer, say). Once the test's cleanups run it stops writing to t.Log:
// certmagic's workers may still log after their Manager stopped (they
// notice the cancellation at their next step), and t.Log after the test
// ends panics.
func Logger(t testing.TB, level zapcore.LevelEnabler, extra ...zapcore.Core) *zap.Logger {
	w := &testLogWriter{t: t}
	t.Cleanup(w.close)
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), w, level)
	return zap.New(zapcore.NewTee(append(extra, core)...))
}

// testLogWriter writes to t.Log until closed.
type testLogWriter struct {
	t      testing.TB
	mu     sync.Mutex // guards closed and serializes writes
	closed bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Logf("%s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) Sync() error { return nil }

func (w *testLogWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}
