package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

// hashedBody is the body bodyOf answers for id: size bytes that only that
// id gives, so a response mixed up with another request's shows.
func hashedBody(id string, size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		sum := sha256.Sum256([]byte(id + "/" + strconv.Itoa(i)))
		b.WriteString(hex.EncodeToString(sum[:]))
	}
	return b.Bytes()[:size]
}

// bodyOf answers GET /body?id=ID&size=N with hashedBody(ID, N) and the id
// in X-Id.
func bodyOf(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	size, _ := strconv.Atoi(r.URL.Query().Get("size"))
	w.Header().Set("X-Id", id)
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.Write(hashedBody(id, size))
}

// TestFaultyPathUnderMigration (issue 12): with 5 % loss each way and up
// to 50 ms of jitter (which reorders packets) on the client path, clients
// with two requests in flight each migrate once: every response is the
// right one and complete (checked against its hash), and every client's
// upstream connections stay the same across its migration.
func TestFaultyPathUnderMigration(t *testing.T) {
	const clients, inFlight, size = 8, 2, 20000
	app := startApp(t, "app", http.HandlerFunc(bodyOf))
	h := startProxy(t, siteFor("", app.Addr()), nil)
	relay := startRelay(t, h.addr, impair.Faults{Loss: 0.05, Jitter: 50 * time.Millisecond})
	conns := make([]*h3client.Conn, clients)
	for i := range conns {
		conns[i] = h.dialTo(t, relay.Addr().String())
	}
	base := "https://localhost:" + strconv.Itoa(h.port)
	runClients(t, conns, inFlight, 1500*time.Millisecond, func(ctx context.Context, conn *h3client.Conn, label string, n int) error {
		id := fmt.Sprintf("%s-%d-%d", label, n, time.Now().UnixNano())
		req, err := http.NewRequestWithContext(ctx, "GET", base+"/body?size="+strconv.Itoa(size)+"&id="+id, nil)
		if err != nil {
			return err
		}
		req.Header.Set("X-Client", label)
		resp, err := conn.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			return err
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("status %d", resp.StatusCode)
		case resp.Header.Get("X-Id") != id:
			return fmt.Errorf("the response of %s came for %s", resp.Header.Get("X-Id"), id)
		case !bytes.Equal(b, hashedBody(id, size)):
			return fmt.Errorf("body of %d bytes, not the one of %s", len(b), id)
		}
		return nil
	})
	// The path healed, the clients close: their CONNECTION_CLOSE gets
	// through before the relay goes.
	st := relay.Stats()
	if err := relay.SetFaults(impair.Faults{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	eventually(t, "every session closed", func() bool { return testutil.ToFloat64(h.srv.metrics.sessionsActive) == 0 })
	checkSets(t, h, app.Requests(), clients, inFlight)
	if st.Dropped == 0 {
		t.Fatalf("the relay dropped nothing: %+v", st)
	}
	t.Logf("relay: %d packets passed, %d dropped; %d requests", st.Forwarded, st.Dropped, len(app.Requests()))
	if got := h.sessionsOpened("h3"); got != clients {
		t.Fatalf("sessions opened = %v, want %d (no re-handshake)", got, clients)
	}
}
