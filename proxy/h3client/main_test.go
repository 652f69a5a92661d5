package h3client

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

func TestMain(m *testing.M) {
	// Loopback CI machines often cap UDP buffers below what quic-go asks
	// for; the warning is noise here.
	os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	goleak.VerifyTestMain(m)
}

const (
	testToken     = "s3cret-token"
	echoAuthority = "echo.test:443"
	// waitLimit bounds every wait for something that should happen at once
	// on loopback.
	waitLimit = 10 * time.Second
)

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// dial connects to addr (the edge or a relay in front of it), trusting e.
func dial(t *testing.T, addr string, e *edgetest.Edge) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c, err := Dial(ctx, addr, e.ClientTLS(), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// openTunnel opens an authorized tunnel to authority.
func openTunnel(t *testing.T, c *Conn, authority string) *Tunnel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	tun, err := c.Tunnel(ctx, authority, bearer(testToken))
	if err != nil {
		t.Fatalf("tunnel to %s: %v", authority, err)
	}
	t.Cleanup(func() { tun.Close() })
	return tun
}

// readFull reads n bytes from tun, failing the test when they do not come
// within waitLimit.
func readFull(t *testing.T, tun *Tunnel, n int) []byte {
	t.Helper()
	watchdog := time.AfterFunc(waitLimit, tun.Abort)
	defer watchdog.Stop()
	buf := make([]byte, n)
	if got, err := io.ReadFull(tun, buf); err != nil {
		t.Fatalf("read %d bytes from the tunnel: got %d: %v", n, got, err)
	}
	return buf
}

// readAll reads tun until EOF, failing the test when that does not come
// within waitLimit.
func readAll(t *testing.T, tun *Tunnel) []byte {
	t.Helper()
	watchdog := time.AfterFunc(waitLimit, tun.Abort)
	defer watchdog.Stop()
	b, err := io.ReadAll(tun)
	if err != nil {
		t.Fatalf("read the tunnel to EOF: %v (after %d bytes)", err, len(b))
	}
	return b
}

// echo sends msg through an echo tunnel and checks that it comes back.
func echo(t *testing.T, tun *Tunnel, msg string) {
	t.Helper()
	if _, err := tun.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	if got := readFull(t, tun, len(msg)); !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo of %q: got %q", msg, got)
	}
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for pause := 100 * time.Microsecond; !cond(); pause = min(2*pause, 5*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(pause)
	}
}
