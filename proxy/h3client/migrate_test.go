package h3client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// edgeSees reports whether the edge's only connection now sends to local.
func edgeSees(e *edgetest.Edge, local netip.AddrPort) bool {
	conns := e.Conns()
	return len(conns) == 1 && conns[0].RemoteAddr().String() == local.String()
}

// TestTunnelSurvivesMigration moves the connection while a tunnel carries
// data both ways: no byte is lost or reordered, the backend sees one TCP
// connection and the edge one QUIC connection.
func TestTunnelSurvivesMigration(t *testing.T) {
	for _, tc := range []struct {
		name       string
		migrations int
	}{
		{"once mid-stream", 1},
		{"three in a row", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := edgetest.Start(t, edgetest.Options{Token: testToken})
			c := dial(t, e.Addr, e)
			tun := openTunnel(t, c, echoAuthority)

			const chunk, chunks = 16 << 10, 64
			sent := make([]byte, chunk*chunks)
			rand.Read(sent)
			var received atomic.Int64
			got := make(chan []byte, 1)
			go func() {
				var buf bytes.Buffer
				watchdog := time.AfterFunc(waitLimit, tun.Abort)
				defer watchdog.Stop()
				b := make([]byte, 32<<10)
				for {
					n, err := tun.Read(b)
					buf.Write(b[:n])
					received.Add(int64(n))
					if err != nil {
						got <- buf.Bytes()
						return
					}
				}
			}()
			write := func(from, to int) {
				for i := from; i < to; i++ {
					if _, err := tun.Write(sent[i*chunk : (i+1)*chunk]); err != nil {
						t.Fatalf("write chunk %d: %v", i, err)
					}
				}
			}

			// Half the data goes out and starts coming back; the
			// migrations happen with bytes in flight both ways.
			write(0, chunks/2)
			waitFor(t, "the echo to start", func() bool { return received.Load() > 0 })
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			ports := map[uint16]bool{c.LocalAddrPort().Port(): true}
			for i := range tc.migrations {
				if err := c.Migrate(ctx); err != nil {
					t.Fatalf("migration %d: %v", i+1, err)
				}
				ports[c.LocalAddrPort().Port()] = true
			}
			write(chunks/2, chunks)
			if err := tun.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, sent) {
				t.Fatalf("got %d bytes back, want the %d sent, in order", len(b), len(sent))
			}

			if c.Migrations() != tc.migrations || len(ports) != tc.migrations+1 {
				t.Fatalf("%d migrations over %d ports, want %d over %d", c.Migrations(), len(ports), tc.migrations, tc.migrations+1)
			}
			if n := e.Echo.Accepted(); n != 1 {
				t.Fatalf("backend accepted %d connections, want 1", n)
			}
			waitFor(t, "the edge to use the new path", func() bool { return edgeSees(e, c.LocalAddrPort()) })
		})
	}
}

// TestMigrateTellsTheEdge checks quic-go pitfall 5: Switch sends nothing,
// so the edge learns of the new path only from the client's next packet
// (without Migrate's own, a delayed ACK some 25 ms later here; with
// traffic lost on the old path, seconds later). Migrate sends at once and
// waits for the edge's answer to its second packet on the new path, which
// the edge sends after switching: when Migrate returns, the edge has moved.
func TestMigrateTellsTheEdge(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	waitFor(t, "the edge to see the client", func() bool { return edgeSees(e, c.LocalAddrPort()) })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for i := range 5 {
		if err := c.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		if !edgeSees(e, c.LocalAddrPort()) {
			t.Fatalf("migration %d: Migrate returned while the edge still sends to %s, not %s", i+1, e.Conns()[0].RemoteAddr(), c.LocalAddrPort())
		}
	}
}

// TestMigrateOrdersRequests migrates three times while other goroutines
// send requests and open tunnels without pause. quic-go's HTTP/3 client
// reads the connection state as response headers arrive, which races with
// a path switch (quic-go pitfall 4); Conn's path lock orders the two, so
// this stays clean under -race and every request succeeds.
func TestMigrateOrdersRequests(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var requests, tunnels atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://localhost/", nil)
				resp, err := c.RoundTrip(req)
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(body) != "ok" {
					t.Errorf("response %q: %v", body, err)
					return
				}
				requests.Add(1)
			}
		})
	}
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			octx, ocancel := context.WithTimeout(context.Background(), waitLimit)
			tun, err := c.Tunnel(octx, echoAuthority, bearer(testToken))
			ocancel()
			if err != nil {
				t.Errorf("tunnel: %v", err)
				return
			}
			msg := fmt.Sprintf("tunnel %d", i)
			_, err = tun.Write([]byte(msg))
			if err == nil {
				err = tun.CloseWrite()
			}
			b, rerr := io.ReadAll(tun)
			tun.Close()
			if err != nil || rerr != nil || string(b) != msg {
				t.Errorf("tunnel %d: got %q: %v %v", i, b, err, rerr)
				return
			}
			tunnels.Add(1)
		}
	})
	waitFor(t, "traffic", func() bool { return requests.Load() > 0 && tunnels.Load() > 0 })
	mctx, mcancel := context.WithTimeout(context.Background(), waitLimit)
	defer mcancel()
	for i := range 10 {
		if err := c.Migrate(mctx); err != nil {
			t.Errorf("migration %d: %v", i+1, err)
			break
		}
		before := requests.Load() + tunnels.Load()
		waitFor(t, "traffic after the migration", func() bool { return requests.Load()+tunnels.Load() > before+2 })
	}
	cancel()
	wg.Wait()
	t.Logf("%d requests and %d tunnels across %d migrations", requests.Load(), tunnels.Load(), c.Migrations())
}

// TestPingKeepsStreamCredit: each Ping uses a unidirectional stream, and
// the edge allows 100 open ones by default; it gives the credit back as it
// stops each stream, so an idle connection can ping forever.
func TestPingKeepsStreamCredit(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{})
	c := dial(t, e.Addr, e)
	for i := range 150 {
		before := c.QUIC().ConnectionStats().PacketsReceived
		if err := c.Ping(); err != nil {
			t.Fatalf("ping %d: %v", i+1, err)
		}
		waitFor(t, "the answer to a ping", func() bool { return c.QUIC().ConnectionStats().PacketsReceived != before })
	}
}

// TestMigrateAfterClose checks that a closed connection refuses to migrate
// and opens no socket.
func TestMigrateAfterClose(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	c.Close()
	if err := c.Migrate(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

// TestPathLock checks the lock's order: a switch waits for the requests
// holding it, new requests wait behind a waiting switch, and a switch that
// gives up lets them in.
func TestPathLock(t *testing.T) {
	var l pathLock
	bg := context.Background()
	if err := l.rlock(bg); err != nil {
		t.Fatal(err)
	}

	// A switch waits for the request in flight and gives up with its ctx;
	// meanwhile a new request waits behind it.
	lctx, lcancel := context.WithCancel(bg)
	locked := make(chan error, 1)
	go func() { locked <- l.lock(lctx) }()
	waitFor(t, "the switch to wait", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.waiting == 1
	})
	rctx, rcancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer rcancel()
	if err := l.rlock(rctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a request passed a waiting switch: %v", err)
	}
	read := make(chan error, 1)
	go func() { read <- l.rlock(bg) }()
	lcancel()
	if err := <-locked; !errors.Is(err, context.Canceled) {
		t.Fatalf("lock: %v, want canceled", err)
	}
	if err := <-read; err != nil {
		t.Fatalf("a request behind a switch that gave up: %v", err)
	}

	// With the requests done, a switch holds it alone.
	l.runlock()
	l.runlock()
	if err := l.lock(bg); err != nil {
		t.Fatal(err)
	}
	go func() { read <- l.rlock(bg) }()
	select {
	case <-read:
		t.Fatal("a request ran during a switch")
	case <-time.After(20 * time.Millisecond):
	}
	l.unlock()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	l.runlock()
}
