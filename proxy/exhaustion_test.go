package proxy

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go/quicvarint"
)

// heapInUse is the process's heap in use after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// sized answers GET /?size=N with N bytes, written in 64 KiB pieces.
func sized(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("size"))
	w.Header().Set("Content-Length", strconv.Itoa(n))
	chunk := bytes.Repeat([]byte("z"), 64<<10)
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}

// TestClientThatNeverReadsIsBounded (issue 12): a client opens 64 requests
// for 8 MiB each and reads none of the answers. The proxy buffers no
// response: what it holds is bounded by the flow-control windows and its
// copy buffers, not by the bodies (8 × 8 MiB would be 64 MiB); the session
// holds no more than max_conns_per_session upstream connections (the other
// requests wait); another client's requests go through meanwhile; and all
// of it is freed when the client goes.
func TestClientThatNeverReadsIsBounded(t *testing.T) {
	const streams, size, maxConns = 64, 8 << 20, 8
	app := startApp(t, "app", http.HandlerFunc(sized))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	base := "https://localhost:" + strconv.Itoa(h.port) + "/?size="
	before := heapInUse()

	hog := h.dial(t)
	var answered atomic.Int32
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range streams {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", base+strconv.Itoa(size), nil)
			req.Header.Set("X-Client", "hog")
			resp, err := hog.RoundTrip(req)
			if err != nil {
				return // the client went before its turn came
			}
			answered.Add(1)
			<-ctx.Done() // holds the response, reads nothing
			resp.Body.Close()
		})
	}
	eventually(t, "the hog's first requests answered", func() bool { return answered.Load() == maxConns })

	// Another client is served as usual.
	other := h.dial(t)
	for range 5 {
		status, body, err := fetch(t, other, base+strconv.Itoa(1<<20))
		if status != 200 || len(body) != 1<<20 || err != nil {
			t.Fatalf("the other client: %d, %d bytes, %v", status, len(body), err)
		}
	}
	// Let the hog's responses fill every window and buffer there is.
	time.Sleep(200 * time.Millisecond)
	grown := heapInUse() - before
	t.Logf("heap grew %.1f MiB for %d requests of %d MiB unread (%d answered)", float64(grown)/(1<<20), streams, size>>20, answered.Load())
	if grown > 24<<20 {
		t.Fatalf("heap grew %d MiB: responses are buffered", grown>>20)
	}
	hogConns := map[string]bool{}
	for _, r := range app.Requests() {
		if r.Client == "hog" {
			hogConns[r.Remote] = true
		}
	}
	if len(hogConns) > maxConns {
		t.Fatalf("the hog's session holds %d upstream connections, want at most %d", len(hogConns), maxConns)
	}
	if n := answered.Load(); n != maxConns {
		t.Fatalf("%d of the hog's requests answered, want %d (the others wait for a connection)", n, maxConns)
	}

	hog.Close()
	cancel()
	wg.Wait()
	other.Close()
	eventually(t, "both sessions closed", func() bool { return testutil.ToFloat64(h.srv.metrics.sessionsActive) == 0 })
}

// qpackBlock is a header block of fields encoded by qpack, with raw field
// lines appended (RFC 9204 §4.5).
func qpackBlock(t *testing.T, fields []h3Field, raw []byte) []byte {
	t.Helper()
	f := headersFrame(t, fields)
	// headersFrame is type, length, block: take the block.
	r := bytes.NewReader(f)
	quicvarint.Read(r)
	quicvarint.Read(r)
	block := make([]byte, r.Len())
	r.Read(block)
	return append(block, raw...)
}

// frameOf is a HEADERS frame of a header block.
func frameOf(block []byte) []byte {
	b := quicvarint.Append(nil, frameHeaders)
	b = quicvarint.Append(b, uint64(len(block)))
	return append(b, block...)
}

// TestQPACKBombs (issue 12): header blocks that decode to far more than
// they weigh are refused as they decode, and a block or an encoder stream
// that tries to use a dynamic table gets nowhere. Each leaves the
// connection (or at least the server) serving.
func TestQPACKBombs(t *testing.T) {
	app := startApp(t, "app", nil)
	h := startProxy(t, siteFor("", app.Addr()), nil)

	t.Run("static references", func(t *testing.T) {
		// Index 49 of the static table is content-security-policy with a
		// 53-byte value: one byte on the wire, 108 decoded (RFC 9114
		// §4.2.2 counts 32 per field). 5000 of them are 5 KB sent, 540 KB
		// decoded, past every limit.
		c := dialRawH3(t, h)
		raw := bytes.Repeat([]byte{0xc0 | 49}, 5000)
		str := c.openStream(t)
		if _, err := str.Write(frameOf(qpackBlock(t, getFields(h), raw))); err != nil {
			t.Fatal(err)
		}
		str.Close()
		if got := readH3Status(t, str); got.reset || got.status != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("got %v, want 431", got)
		}
		if got := c.request(t, getFields(h)); got.status != 200 {
			t.Fatalf("the next request on the connection: %v", got)
		}
	})

	t.Run("dynamic reference", func(t *testing.T) {
		// Required Insert Count 1 (encoded 2) and a reference to dynamic
		// entry 0: the server's table has no room (capacity 0).
		c := dialRawH3(t, h)
		f := frameOf([]byte{0x02, 0x00, 0x80})
		str := c.openStream(t)
		if _, err := str.Write(f); err != nil {
			t.Fatal(err)
		}
		str.Close()
		if got := readH3Status(t, str); !got.reset && got.status < 400 {
			t.Fatalf("got %v, want the stream reset or refused", got)
		}
		fresh := dialRawH3(t, h)
		if got := fresh.request(t, getFields(h)); got.status != 200 {
			t.Fatalf("a request after it: %v", got)
		}
	})

	t.Run("encoder stream", func(t *testing.T) {
		// Clients fill their QPACK encoder streams with insertions the
		// server never reads (its table has capacity 0): what the server
		// holds for each is bounded by the connection's flow-control
		// window, not by what the client would send (4 MiB each).
		const conns, each = 16, 4 << 20
		b := quicvarint.Append(nil, 0x02)           // QPACK encoder stream
		b = append(b, 0x3f, 0xe1, 0x1f)             // Set Dynamic Table Capacity 4096
		insert := append([]byte{0x40 | 0x3f, 0x00}, // Insert With Name Reference (static), a literal value
			bytes.Repeat([]byte("v"), 1000)...)
		for len(b) < each {
			b = append(b, insert...)
		}
		before := heapInUse() // the payload, shared by every writer, included
		var wg sync.WaitGroup
		var sent atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		for range conns {
			c := dialRawH3(t, h)
			str, err := c.conn.OpenUniStream()
			if err != nil {
				t.Fatal(err)
			}
			context.AfterFunc(ctx, func() { str.CancelWrite(0) })
			wg.Go(func() {
				for off := 0; off < len(b); off += 16 << 10 {
					n, err := str.Write(b[off:min(off+16<<10, len(b))])
					sent.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
		}
		time.Sleep(500 * time.Millisecond) // for the windows to fill
		grown := heapInUse() - before
		t.Logf("heap grew %.1f MiB for %d encoder streams (%.1f MiB sent)", float64(grown)/(1<<20), conns, float64(sent.Load())/(1<<20))
		cancel()
		wg.Wait()
		if grown > conns*(1<<20)+16<<20 {
			t.Fatalf("heap grew %d MiB for %d connections", grown>>20, conns)
		}
		if got := dialRawH3(t, h).request(t, getFields(h)); got.status != 200 {
			t.Fatalf("a request after it: %v", got)
		}
	})
}
