package h3client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// TestTunnelEcho carries 1 MiB through a tunnel while reading the echo
// concurrently. The edge (quic-go's server) rejects a CONNECT that has
// :scheme or :path, so an answered tunnel also shows the request's form.
func TestTunnelEcho(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	tun := openTunnel(t, c, echoAuthority)
	if tun.Response().StatusCode != http.StatusOK {
		t.Fatalf("status %d", tun.Response().StatusCode)
	}

	sent := make([]byte, 1<<20)
	rand.Read(sent)
	got := make(chan []byte, 1)
	go func() { got <- readAll(t, tun) }()
	for b := sent; len(b) > 0; b = b[min(len(b), 16<<10):] {
		if _, err := tun.Write(b[:min(len(b), 16<<10)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tun.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, sent) {
		t.Fatalf("echo: %d bytes back, want the %d sent", len(b), len(sent))
	}
	if n := e.Echo.Accepted(); n != 1 {
		t.Fatalf("backend accepted %d connections, want 1", n)
	}
}

// TestTunnelHalfClose checks both directions of half-close: the client's
// FIN reaches the backend as EOF while the backend can still answer, and
// the backend's EOF reaches the client while the client can still send.
func TestTunnelHalfClose(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)

	t.Run("client closes first", func(t *testing.T) {
		tun := openTunnel(t, c, echoAuthority)
		if _, err := tun.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if err := tun.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := tun.Write([]byte("more")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after CloseWrite: %v, want net.ErrClosed", err)
		}
		// The echo backend answers after our EOF, then closes its side.
		if got := readAll(t, tun); string(got) != "last words" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("edge closes first", func(t *testing.T) {
		tun := openTunnel(t, c, edgetest.BannerAuthority)
		if got := readAll(t, tun); string(got) != edgetest.BannerLine {
			t.Fatalf("banner %q", got)
		}
		if _, err := tun.Write([]byte("still talking")); err != nil {
			t.Fatalf("write after the edge's EOF: %v", err)
		}
		if err := tun.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-e.Banner.Received:
			if string(got) != "still talking" {
				t.Fatalf("backend read %q", got)
			}
		case <-time.After(waitLimit):
			t.Fatal("the backend never saw EOF")
		}
	})
}

// TestTunnelRefused checks that the edge's refusals surface as a
// *StatusError with the status and the edge's reason.
func TestTunnelRefused(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	for _, tc := range []struct {
		name   string
		hdr    http.Header
		status int
		msg    string
	}{
		{"no token", nil, http.StatusUnauthorized, "tunnel refused: 401 Unauthorized: missing bearer token"},
		{"wrong token", bearer("guess"), http.StatusForbidden, "tunnel refused: 403 Forbidden: invalid token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			tun, err := c.Tunnel(ctx, echoAuthority, tc.hdr)
			if err == nil {
				tun.Close()
				t.Fatal("tunnel opened")
			}
			var se *StatusError
			if !errors.As(err, &se) || se.StatusCode != tc.status {
				t.Fatalf("err = %v, want a StatusError %d", err, tc.status)
			}
			if err.Error() != tc.msg {
				t.Fatalf("message %q, want %q", err, tc.msg)
			}
			if tc.status == http.StatusUnauthorized && !strings.HasPrefix(se.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("header %v", se.Header)
			}
		})
	}
	if n := e.Echo.Accepted(); n != 0 {
		t.Fatalf("refused tunnels reached the backend %d times", n)
	}
	// The connection is still good after refusals.
	echo(t, openTunnel(t, c, echoAuthority), "after refusals")
}

// TestTunnelOpenCanceled checks that ctx bounds waiting for the edge's
// answer, and that the abandoned stream is reset so the edge's handler
// ends (the edge fails the test if a handler outlives it by a second).
func TestTunnelOpenCanceled(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Tunnel(ctx, edgetest.HangAuthority, bearer(testToken))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	echo(t, openTunnel(t, c, echoAuthority), "still usable")
}

// TestTunnelAbort checks that Abort ends a blocked Read at once with a
// stream error, leaving the connection usable, and that the end of the
// connection shows as ErrConnectionLost.
func TestTunnelAbort(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	tun := openTunnel(t, c, echoAuthority)
	echo(t, tun, "hello")
	done := make(chan error, 1)
	go func() {
		_, err := tun.Read(make([]byte, 1))
		done <- err
	}()
	tun.Abort()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, ErrConnectionLost) {
			t.Fatalf("read after Abort: %v, want a stream error", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Abort did not end a blocked Read")
	}
	if err := tun.Close(); err != nil {
		t.Fatalf("close after abort: %v", err)
	}
	echo(t, openTunnel(t, c, echoAuthority), "the connection lives on")

	// When the connection ends, tunnel errors say so at once.
	tun = openTunnel(t, c, echoAuthority)
	c.Close()
	if _, err := tun.Read(make([]byte, 1)); !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("read after the connection closed: %v, want ErrConnectionLost", err)
	}
	if _, err := c.Tunnel(context.Background(), echoAuthority, bearer(testToken)); !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("open on a closed connection: %v, want ErrConnectionLost", err)
	}
}
