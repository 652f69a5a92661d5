package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// countingWriter records each write that reaches the "socket".
type countingWriter struct {
	mu     sync.Mutex
	writes int
	data   bytes.Buffer
	err    error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.writes++
	return w.data.Write(p)
}

func (w *countingWriter) snapshot() (int, []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, bytes.Clone(w.data.Bytes())
}

// A bulk body read a packet at a time goes out in coalesceBytes writes, not
// one write per read, and arrives whole and in order.
func TestCoalescerBatchesSmallWrites(t *testing.T) {
	sock := &countingWriter{}
	dst := bufio.NewWriter(sock)
	co := &coalescer{delay: time.Hour} // only size and finish flush here
	co.start(dst)
	var want bytes.Buffer
	for i := range 1000 {
		p := bytes.Repeat([]byte{byte(i)}, 1200)
		want.Write(p)
		if _, err := co.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := co.finish(); err != nil {
		t.Fatal(err)
	}
	if err := dst.Flush(); err != nil {
		t.Fatal(err)
	}
	writes, got := sock.snapshot()
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the socket got %d bytes, not the %d written, in order", len(got), want.Len())
	}
	// 1.2 MB in 32 KiB writes: 37; allow the connection writer's own
	// splitting, never one write per read.
	if max := 2*want.Len()/coalesceBytes + 2; writes > max {
		t.Fatalf("%d writes reached the socket for 1000 reads; want at most %d", writes, max)
	}
}

// A trickle is not held back: bytes with nothing after them reach the socket
// by themselves, after the delay.
func TestCoalescerFlushesATrickle(t *testing.T) {
	sock := &countingWriter{}
	co := &coalescer{}
	co.start(bufio.NewWriter(sock))
	defer co.finish()
	if _, err := co.Write([]byte("event 1\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, got := sock.snapshot()
		if string(got) == "event 1\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lone write never reached the socket (got %q)", got)
		}
		time.Sleep(time.Millisecond)
	}
	// And again: the timer re-arms.
	if _, err := co.Write([]byte("event 2\n")); err != nil {
		t.Fatal(err)
	}
	for {
		_, got := sock.snapshot()
		if string(got) == "event 1\nevent 2\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second write never reached the socket (got %q)", got)
		}
		time.Sleep(time.Millisecond)
	}
}

// A write error (the backend went away) sticks: later writes and finish
// return it, and a timer firing after finish touches nothing.
func TestCoalescerErrorSticks(t *testing.T) {
	boom := errors.New("connection reset")
	sock := &countingWriter{err: boom}
	co := &coalescer{delay: time.Millisecond}
	co.start(bufio.NewWriterSize(sock, 16))
	if _, err := co.Write(bytes.Repeat([]byte("x"), 2*coalesceBytes)); !errors.Is(err, boom) {
		t.Fatalf("large write: %v, want %v", err, boom)
	}
	if _, err := co.Write([]byte("y")); !errors.Is(err, boom) {
		t.Fatalf("write after the error: %v, want %v", err, boom)
	}
	if err := co.finish(); !errors.Is(err, boom) {
		t.Fatalf("finish: %v, want %v", err, boom)
	}
	if err := co.finish(); !errors.Is(err, boom) {
		t.Fatalf("second finish: %v, want %v", err, boom)
	}
	co.fire() // a late timer
}

// The request header waiting in the connection's writer goes out even when
// the body is slow to come, so the backend can start (or refuse) early.
func TestCoalescerSendsAWaitingHeader(t *testing.T) {
	sock := &countingWriter{}
	dst := bufio.NewWriter(sock)
	dst.WriteString("POST / HTTP/1.1\r\nHost: x\r\n\r\n")
	co := &coalescer{}
	co.start(dst)
	defer co.finish()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, got := sock.snapshot(); len(got) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the header never reached the socket")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestStreamingBodyReachesTheBackendAsItComes: over a real connection, the
// first part of a request body reaches the backend while the client still
// holds the rest (the client waits for the backend to have read it), and a
// second body on the same connection does too: the coalescer delays a
// trickle, it never holds it until the body ends.
func TestStreamingBodyReachesTheBackendAsItComes(t *testing.T) {
	gotFirst := make(chan string, 1)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, len("first part;"))
		if _, err := io.ReadFull(r.Body, first); err != nil {
			t.Errorf("read the first part: %v", err)
			return
		}
		gotFirst <- string(first)
		rest, _ := io.ReadAll(r.Body)
		io.WriteString(w, string(first)+string(rest))
	})
	p, _ := newPool(t, Config{Backends: []string{b.addr()}})
	l := p.Lease(1, nil)
	defer l.Close()
	for i := range 2 {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("first part;"))
			select {
			case <-gotFirst:
				pw.Write([]byte("second part"))
				pw.Close()
			case <-time.After(10 * time.Second):
				pw.CloseWithError(errors.New("the backend never saw the first part"))
			}
		}()
		resp, err := l.RoundTrip(newReq(t, context.Background(), http.MethodPost, "/", pr, -1))
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "first part;second part" {
			t.Fatalf("body %d: backend answered %q", i, body)
		}
	}
	if n := l.Conns(); n != 1 {
		t.Fatalf("%d upstream connections for two bodies, want 1", n)
	}
}
