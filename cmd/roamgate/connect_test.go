package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// These tests run connect against edgetest's edge (a quic-go HTTP/3 server
// that splices CONNECT streams to a TCP echo backend), not roamgate's own
// proxy.

const connectToken = "connect-token"

var connectListening = regexp.MustCompile(`listening on (\S+);`)

// connecting runs `roamgate connect` with args until the test stops it, and
// returns its local address, its stderr, and stop, which cancels it and
// returns its error.
func connecting(t *testing.T, args ...string) (addr string, stderr *syncBuffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr = &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"connect"}, args...), io.Discard, stderr) }()
	stopped := false
	var exited error // connect's error, once it exited on its own
	stop = func() error {
		if stopped {
			return exited
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(time.Second):
			return errors.New("connect did not stop within a second")
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := connectListening.FindStringSubmatch(stderr.String()); m != nil {
			return m[1], stderr, stop
		}
		select {
		case err := <-done:
			stopped, exited = true, err
			t.Fatalf("connect exited: %v\n%s", err, stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect is not listening:\n%s", stderr.String())
		}
	}
}

// edgeFiles starts an edge and writes its root and the token to files.
func edgeFiles(t *testing.T, opts edgetest.Options) (e *edgetest.Edge, ca, token string) {
	t.Helper()
	e = edgetest.Start(t, opts)
	dir := t.TempDir()
	return e, writeFile(t, dir, "root.crt", string(e.Cert.CertPEM)), writeFile(t, dir, "token", connectToken+"\n")
}

// roundTrip sends msg on a new local connection to addr, half-closes, and
// returns everything read until EOF.
func roundTrip(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after %q: %v", b, err)
	}
	return string(b)
}

// waitForText polls stderr until it contains want.
func waitForText(t *testing.T, stderr *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("stderr lacks %q:\n%s", want, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnect carries local TCP connections through one QUIC connection:
// bytes reach the echo backend and come back, each side's EOF passes as a
// half-close, and cancelling stops it with its listener closed.
func TestConnect(t *testing.T) {
	e, ca, token := edgeFiles(t, edgetest.Options{Token: connectToken})
	addr, stderr, stop := connecting(t, "https://"+e.Addr, "--listen", "127.0.0.1:0",
		"--token-file", token, "--ca", ca, "--server-name", "localhost")

	// Several at once, and a large one.
	big := strings.Repeat("0123456789abcdef", 1<<14)
	done := make(chan string, 3)
	for i := range 3 {
		go func() {
			msg := fmt.Sprintf("connection %d: %s", i, big)
			if got := roundTrip(t, addr, msg); got != msg {
				done <- fmt.Sprintf("connection %d: %d bytes back, want %d", i, len(got), len(msg))
				return
			}
			done <- ""
		}()
	}
	for range 3 {
		if msg := <-done; msg != "" {
			t.Fatal(msg)
		}
	}
	if e.Echo.Accepted() != 3 || len(e.Conns()) != 1 {
		t.Fatalf("%d backend connections over %d QUIC connections; want 3 over 1", e.Echo.Accepted(), len(e.Conns()))
	}

	// A tunnel open at shutdown is closed too.
	open, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	io.WriteString(open, "x")
	open.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(open, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr.String())
	}
	if _, err := open.Read(make([]byte, 1)); err == nil {
		t.Fatal("a local connection outlived connect")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("still listening after shutdown")
	}
	waitFor := func() bool { return len(e.Conns()) == 1 && e.Conns()[0].Context().Err() != nil }
	deadline := time.Now().Add(10 * time.Second)
	for !waitFor() {
		if time.Now().After(deadline) {
			t.Fatal("the QUIC connection is still open after shutdown")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestConnectEdgeHalfClose checks the other direction of half-close: the
// backend's EOF reaches the local client, which can still send.
func TestConnectEdgeHalfClose(t *testing.T) {
	e, ca, _ := edgeFiles(t, edgetest.Options{Token: connectToken, Backend: edgetest.Banner})
	addr, _, _ := connecting(t, "--listen", "127.0.0.1:0", "--token", connectToken, "--ca", ca, "https://"+e.Addr)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if banner, err := io.ReadAll(c); err != nil || string(banner) != edgetest.BannerLine {
		t.Fatalf("banner %q: %v", banner, err)
	}
	if _, err := io.WriteString(c, "still talking"); err != nil {
		t.Fatalf("write after the backend's EOF: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case got := <-e.Banner.Received:
		if string(got) != "still talking" {
			t.Fatalf("backend read %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend never saw EOF")
	}
}

// TestConnectRefused: a refused tunnel closes the local connection and says
// why on stderr.
func TestConnectRefused(t *testing.T) {
	e, ca, _ := edgeFiles(t, edgetest.Options{Token: connectToken})
	addr, stderr, _ := connecting(t, "https://"+e.Addr, "--listen", "127.0.0.1:0", "--token", "wrong", "--ca", ca)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello")
	// Closed with "hello" unread: EOF or a reset, never an answer.
	if got, err := io.ReadAll(c); len(got) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a refused tunnel answered %q (%v)", got, err)
	}
	waitForText(t, stderr, "tunnel refused: 403 Forbidden: invalid token")
	if e.Echo.Accepted() != 0 {
		t.Fatal("a refused tunnel reached the backend")
	}
}

// TestConnectMutualTLS: with --cert/--key connect presents a client
// certificate; without one, an edge that requires it turns connect away.
func TestConnectMutualTLS(t *testing.T) {
	client := edgetest.NewCert(t, "client")
	e, ca, token := edgeFiles(t, edgetest.Options{Token: connectToken, ClientCAs: client.Pool})
	dir := t.TempDir()
	cert := writeFile(t, dir, "client.crt", string(client.CertPEM))
	key := writeFile(t, dir, "client.key", string(client.KeyPEM))

	addr, _, _ := connecting(t, "https://"+e.Addr, "--listen", "127.0.0.1:0", "--token-file", token, "--ca", ca, "--cert", cert, "--key", key)
	if got := roundTrip(t, addr, "hello"); got != "hello" {
		t.Fatalf("got %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	err := run(ctx, []string{"connect", "https://" + e.Addr, "--listen", "127.0.0.1:0", "--token-file", token, "--ca", ca}, io.Discard, &stderr)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("connect without a client certificate: %v", err)
	}
}

// TestConnectReconnects: when the edge closes the connection, connect says
// so, closes the tunnels on it with a message, and carries new local
// connections over a new QUIC connection.
func TestConnectReconnects(t *testing.T) {
	e, ca, token := edgeFiles(t, edgetest.Options{Token: connectToken})
	addr, stderr, _ := connecting(t, "https://"+e.Addr, "--listen", "127.0.0.1:0", "--token-file", token, "--ca", ca, "--interval", "20ms")

	open, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	open.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(open, "x")
	if _, err := io.ReadFull(open, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}

	e.CloseConns()
	waitForText(t, stderr, "reconnected: connection lost: ")
	waitForText(t, stderr, "closed: its QUIC connection to the edge was lost")
	if _, err := io.ReadAll(open); err == nil {
		t.Fatal("the tunnel on the lost connection ended cleanly")
	}
	if got := roundTrip(t, addr, "after"); got != "after" {
		t.Fatalf("got %q", got)
	}
	if n := len(e.Conns()); n != 2 {
		t.Fatalf("%d QUIC connections, want 2", n)
	}
}

func TestConnectUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--listen", "127.0.0.1:0"},
		{"http://127.0.0.1:1"},
		{"https://127.0.0.1:1/path"},
		{"https://user@127.0.0.1:1"},
		{"https://127.0.0.1:1", "https://127.0.0.1:2"},
		{"https://127.0.0.1:1", "--token", "t", "--token-file", "f"},
		{"https://127.0.0.1:1", "--cert", "c.pem"},
		{"https://127.0.0.1:1", "--key", "k.pem"},
		{"https://127.0.0.1:1", "--listen", "2222"},
		{"https://127.0.0.1:1", "--interval", "0s"},
		{"https://127.0.0.1:1", "--nope"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), append([]string{"connect"}, args...), io.Discard, &stderr)
		if !errors.Is(err, errUsage) {
			t.Errorf("%q: err = %v, want a usage error", args, err)
		}
		if stderr.Len() == 0 {
			t.Errorf("%q: nothing on stderr", args)
		}
	}
	// Files that cannot be read are errors, not usage errors.
	err := run(context.Background(), []string{"connect", "https://127.0.0.1:1", "--ca", "/nonexistent/root.crt"}, io.Discard, io.Discard)
	if err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--ca") {
		t.Errorf("missing --ca file: %v", err)
	}
}

// TestConnectParse checks the edge URL forms and the defaults.
func TestConnectParse(t *testing.T) {
	for _, tc := range []struct {
		args                        []string
		edge, serverName, authority string
	}{
		{[]string{"https://edge.example"}, "edge.example:443", "edge.example", "edge.example:443"},
		{[]string{"--listen", "127.0.0.1:0", "https://edge.example:8443/"}, "edge.example:8443", "edge.example", "edge.example:8443"},
		{[]string{"https://[::1]:4433", "--server-name", "localhost"}, "[::1]:4433", "localhost", "localhost:4433"},
	} {
		o, err := parseConnect(tc.args, io.Discard, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if o.edge != tc.edge || o.serverName != tc.serverName || o.authority != tc.authority || o.interval != time.Second {
			t.Errorf("%q: %+v", tc.args, o)
		}
	}
}
