package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/roamgate/roamgate/examples/legacyapp"
)

// TestUnixSocketBackendAcrossMigration: a sidecar's backend on a Unix socket
// (reverse_proxy unix//path) gets the session's requests on one kept-alive
// connection, with the client's forwarding headers, before and after the
// client migrates; a second client gets a connection of its own.
func TestUnixSocketBackendAcrossMigration(t *testing.T) {
	_, upstreamAddr := startAppOn(t, "unix", nil)
	h := startProxy(t, siteFor("", upstreamAddr), nil)

	c := h.dial(t)
	start := c.LocalAddr()
	reqs := []legacyapp.Request{seen(t, c, h, "c1"), seen(t, c, h, "c1")}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	reqs = append(reqs, seen(t, c, h, "c1"), seen(t, c, h, "c1"))
	checkSameView(t, reqs, start.Port)

	other := seen(t, h.dial(t), h, "c2")
	if other.Conn == reqs[0].Conn {
		t.Fatalf("a second client's request came on the first client's upstream connection %d", other.Conn)
	}
}
