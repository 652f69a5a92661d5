package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamgate/roamgate/examples/legacyapp"
	"github.com/roamgate/roamgate/proxy/h3client"
)

// TestSessionSetUnderConcurrency holds the invariant at every client
// concurrency (issue 12): N HTTP/3 clients, each keeping c requests in
// flight for a while and migrating once in the middle, every few requests
// abandoning a response midway (reading part of it, then closing: what a
// browser does when a page is left). The backend sees at most c upstream
// connections per client, no connection carries two clients, and after its
// migration each client uses only connections of the set it had before.
//
// On main before the fix, each abandoned response cost its upstream
// connection (the proxy aborted it), so the backend saw a new connection
// after every cancel and the sets changed.
//
// An abandoning worker pauses before its next request: a request the
// proxy receives before it has seen the cancel is, to the proxy, one more
// stream in flight, which the bound allows a connection for.
func TestSessionSetUnderConcurrency(t *testing.T) {
	const clients = 5
	for _, c := range []int{1, 2, 4, 8} {
		t.Run(strconv.Itoa(c), func(t *testing.T) {
			app := startApp(t, "app", http.HandlerFunc(bigBody))
			h := startProxy(t, siteFor("", app.Addr()), nil)
			base := "https://localhost:" + strconv.Itoa(h.port)
			conns := make([]*h3client.Conn, clients)
			for i := range conns {
				conns[i] = h.dial(t)
			}
			runClients(t, conns, c, 600*time.Millisecond, func(ctx context.Context, conn *h3client.Conn, label string, n int) error {
				req, err := http.NewRequestWithContext(ctx, "GET", base+"/big", nil)
				if err != nil {
					return err
				}
				req.Header.Set("X-Client", label)
				resp, err := conn.RoundTrip(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				if n%5 == 4 {
					// Abandon it midway, then give the proxy a moment to see.
					if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
						return err
					}
					resp.Body.Close()
					time.Sleep(20 * time.Millisecond)
					return nil
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				if len(b) != bigBodySize {
					return fmt.Errorf("body of %d bytes, want %d", len(b), bigBodySize)
				}
				return nil
			})
			checkSets(t, h, app.Requests(), clients, c)
		})
	}
}

// bigBodySize is the size of bigBody's answers: several packets, sent in
// two writes, so a client can abandon it midway.
const bigBodySize = 40 << 10

func bigBody(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", strconv.Itoa(bigBodySize))
	io.WriteString(w, strings.Repeat("a", bigBodySize/2))
	w.(http.Flusher).Flush()
	io.WriteString(w, strings.Repeat("b", bigBodySize/2))
}

// runClients runs c request loops on each connection for about twice d;
// each connection migrates once after d, while its other loops' requests
// are in flight (h3client holds new requests off during the switch). Each
// request carries the label "client/phase" (phase 0 before the
// migration, 1 after) for the backend to record.
func runClients(t *testing.T, conns []*h3client.Conn, c int, d time.Duration, do func(ctx context.Context, conn *h3client.Conn, label string, n int) error) {
	t.Helper()
	var wg sync.WaitGroup
	for i, conn := range conns {
		var phase atomic.Int32
		migrateAt := time.Now().Add(d)
		end := migrateAt.Add(d)
		for w := range c {
			wg.Go(func() {
				// Until the end, and at least one request after the
				// migration (which may take long on a loaded machine).
				after := false
				for n := 0; time.Now().Before(end) || !after; n++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					p := phase.Load()
					after = after || p == 1
					err := do(ctx, conn, fmt.Sprintf("c%d/%d", i, p), n)
					cancel()
					if err != nil {
						t.Errorf("client %d worker %d request %d: %v", i, w, n, err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			time.Sleep(time.Until(migrateAt))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := conn.Migrate(ctx); err != nil {
				t.Errorf("client %d: migrate: %v", i, err)
			}
			phase.Store(1)
		})
	}
	wg.Wait()
}

// checkSets asserts what the backend saw of clients with c requests in
// flight each: at most c upstream connections per client, none shared
// between clients, and every connection kept for its session's life: h's
// proxy closed none before its session ended (so the connections a
// client used after its migration are the ones it had, or new ones that
// grew a set below c, never replacements).
func checkSets(t *testing.T, h *harness, reqs []legacyapp.Request, clients, c int) {
	t.Helper()
	owner := map[string]string{}            // upstream connection → client
	sets := map[string][2]map[string]bool{} // client → phase → connections
	for _, r := range reqs {
		client, phase, _ := strings.Cut(r.Client, "/")
		if o, ok := owner[r.Remote]; ok && o != client {
			t.Fatalf("upstream connection %s carried clients %s and %s", r.Remote, o, client)
		}
		owner[r.Remote] = client
		s, ok := sets[client]
		if !ok {
			s = [2]map[string]bool{{}, {}}
			sets[client] = s
		}
		s[phase[0]-'0'][r.Remote] = true
	}
	if len(sets) != clients {
		t.Fatalf("%d clients reached the backend, want %d", len(sets), clients)
	}
	for client, s := range sets {
		if len(s[1]) == 0 {
			t.Fatalf("%s sent nothing after its migration", client)
		}
		// A set smaller than c before the migration may grow after it
		// (roamgate waits briefly for a connection about to be free
		// rather than dial, so a client can reach its last connection
		// late); one that was full may not.
		all, added := len(s[0]), 0
		for a := range s[1] {
			if !s[0][a] {
				all++
				added++
			}
		}
		if added > 0 && len(s[0]) >= c {
			t.Errorf("%s used %d new upstream connection(s) after its migration, its set of %d being full", client, added, len(s[0]))
		}
		if all > c {
			t.Errorf("%s used %d upstream connections with %d requests in flight", client, all, c)
		}
	}
	if closed := closedMidSession(t, h); len(closed) > 0 {
		t.Errorf("upstream connections closed before their sessions ended (a new one replaced each): %v", closed)
	}
	if len(owner) > clients*c {
		t.Fatalf("backend saw %d connections for %d clients × %d in flight", len(owner), clients, c)
	}
}

// closedMidSession counts the upstream connections h's proxy closed for
// another reason than their session's end, by reason.
func closedMidSession(t *testing.T, h *harness) map[string]float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "roamgate_upstream_conns_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() != "session_end" && m.GetCounter().GetValue() > 0 {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
