package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestHundredReloadsUnderLoad (issue 14): 100 reloads through the control
// socket, alternating between two Roamfiles that differ in sites (a name
// that gets a certificate and loses it again), ports (one opened and
// drained), routes and headers, while HTTP/3 clients send requests: no
// request fails, and descriptors, goroutines and heap come back to where
// they were (goleak checks the end in TestMain).
func TestHundredReloadsUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("100 reloads")
	}
	// A backend that keeps nothing per request (the legacy app records
	// each), and no access log: what grows is roamgate's.
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "{}") })}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go backend.Serve(bln)
	defer backend.Close()
	app := struct{ addr string }{bln.Addr().String()}
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	base := "{\n\tdefault_bind 127.0.0.1\n\tdata_dir " + dataDir + "\n\tlog {\n\t\tlevel warn\n\t}\n\tlog access off\n}\n"
	port := strconv.Itoa(edgetest.FreePort(t))
	a := base + "127.0.0.1:0 {\n\theader X-Gen a\n\treverse_proxy " + app.addr + "\n}\n"
	b := base + "127.0.0.1:0 {\n\theader X-Gen b\n\thandle /b* {\n\t\trespond \"b\"\n\t}\n\treverse_proxy " + app.addr + "\n}\n" +
		"localhost:" + port + " {\n\trespond \"second\"\n}\n"
	f := writeFile(t, dir, "Roamfile", a)
	// The process log at warn, so the listening line must come from a
	// first start at info: find the address from the control of a run
	// with info, then reload to warn.
	os.WriteFile(f, []byte(strings.Replace(a, "level warn", "level info", 1)), 0o600)
	addr, logs, stop := servingLogs(t, []string{"run", "--config", f})
	defer stop()
	waitForCertificate(t, addr, dataDir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	reload := func(text string) {
		t.Helper()
		os.WriteFile(f, []byte(text), 0o600)
		if err := run(ctx, []string{"reload", "--config", f}, io.Discard, io.Discard); err != nil {
			t.Fatalf("reload: %v", err)
		}
	}
	reload(a)

	var failed, done atomic.Int64
	var wg sync.WaitGroup
	lctx, stopLoad := context.WithCancel(ctx)
	for i := range 4 {
		c := &loadClient{id: i, conn: dialEdge(t, addr, dataDir), addr: addr}
		for range 2 {
			wg.Go(func() {
				for lctx.Err() == nil {
					if r := c.get(lctx); r.err != nil && lctx.Err() == nil {
						failed.Add(1)
						t.Errorf("client %d: %v", c.id, r.err)
					}
					done.Add(1)
				}
			})
		}
	}
	time.Sleep(500 * time.Millisecond)
	fds, goroutines, heap := openFDs(t), runtime.NumGoroutine(), heapInUse()
	start := time.Now()
	n := 100
	if v, err := strconv.Atoi(os.Getenv("ROAMGATE_RELOADS")); err == nil && v > 0 {
		n = v // more, to see whether anything grows with the count
	}
	for i := range n {
		if i%2 == 0 {
			reload(b)
		} else {
			reload(a)
		}
	}
	took := time.Since(start)
	time.Sleep(500 * time.Millisecond)
	stopLoad()
	wg.Wait()
	// Let the drained ports and finished requests settle.
	var fds2, goroutines2 int
	var heap2 uint64
	for range 50 {
		fds2, goroutines2, heap2 = openFDs(t), runtime.NumGoroutine(), heapInUse()
		if fds2 <= fds+4 && goroutines2 <= goroutines+10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d reloads in %v under load (%d requests, %d failed): descriptors %d → %d, goroutines %d → %d, heap in use %.1f → %.1f MiB",
		n, took.Round(time.Millisecond), done.Load(), failed.Load(), fds, fds2, goroutines, goroutines2, float64(heap)/(1<<20), float64(heap2)/(1<<20))
	if fds2 > fds+4 {
		t.Errorf("descriptors grew from %d to %d", fds, fds2)
	}
	if goroutines2 > goroutines+10 {
		t.Errorf("goroutines grew from %d to %d", goroutines, goroutines2)
		if p := os.Getenv("ROAMGATE_GOROUTINES"); p != "" {
			f, _ := os.Create(p)
			pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
		}
	}
	if p := os.Getenv("ROAMGATE_HEAP"); p != "" {
		f, _ := os.Create(p)
		pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
		t.Logf("log buffer: %d bytes", len(logs.String()))
	}
	if heap2 > heap+4<<20 {
		t.Errorf("heap in use grew from %d to %d bytes", heap, heap2)
	}
}
