package upstream

import (
	"bufio"
	"sync"
	"time"
)

// Request bodies arrive from HTTP/3 a packet or two per read (about 1.2 KB
// each) whenever the network is slower than the proxy. Flushing each read
// upstream cost one write system call per packet, close to 4 ms of CPU per
// MB uploaded. A coalescer gathers the reads instead and flushes when
// coalesceBytes are waiting, when the body ends, or coalesceDelay after the
// oldest byte not yet sent: a bulk upload goes out in large writes, and a
// body that trickles (a streamed log, a slow client) still reaches the
// backend within coalesceDelay of arriving.
const (
	coalesceBytes = 32 << 10
	coalesceDelay = 500 * time.Microsecond
)

var coalescePool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, coalesceBytes) }}

// coalescer is an io.Writer in front of a connection's buffered writer.
// A connection keeps one (and its timer) for the request bodies it
// carries, one at a time; the timer may flush from another goroutine, so
// every use of the buffers holds mu.
type coalescer struct {
	mu    sync.Mutex
	buf   *bufio.Writer // coalesceBytes, from coalescePool, while a body is written
	dst   *bufio.Writer // the connection's writer
	delay time.Duration // 0: coalesceDelay
	timer *time.Timer
	armed bool  // the timer will flush
	done  bool  // finish was called: a late timer does nothing
	err   error // the first write error; every later call returns it
}

// start readies the coalescer for a request body going to dst.
func (w *coalescer) start(dst *bufio.Writer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.delay == 0 {
		w.delay = coalesceDelay
	}
	w.dst, w.done, w.err = dst, false, nil
	w.buf = coalescePool.Get().(*bufio.Writer)
	w.buf.Reset(dst)
	if dst.Buffered() > 0 {
		// The request header waits in dst: it goes out with the first body
		// bytes, or after the delay if the body is slow to come, so the
		// backend can start (or refuse) the request meanwhile.
		w.arm()
	}
}

// arm starts the timer unless it runs; mu is held.
func (w *coalescer) arm() {
	if w.armed {
		return
	}
	w.armed = true
	if w.timer == nil {
		w.timer = time.AfterFunc(w.delay, w.fire)
	} else {
		w.timer.Reset(w.delay)
	}
}

func (w *coalescer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.buf.Write(p) // writes through to dst when the buffer fills
	if err != nil {
		w.err = err
		return n, err
	}
	if w.buf.Buffered() == 0 {
		// A large write went through, or it filled the buffer exactly:
		// send it, with anything dst held.
		if w.err = w.dst.Flush(); w.err != nil {
			return n, w.err
		}
		return n, nil
	}
	w.arm()
	return n, nil
}

// fire is the timer's flush.
func (w *coalescer) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	if w.done || w.err != nil {
		return
	}
	w.err = w.flushLocked()
}

func (w *coalescer) flushLocked() error {
	if err := w.buf.Flush(); err != nil {
		return err
	}
	return w.dst.Flush()
}

// finish moves what is buffered into the connection's writer (not flushing
// it: the caller may add a trailer) until the next start: its timer does
// nothing meanwhile and its buffer goes back to the pool.
func (w *coalescer) finish() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return w.err
	}
	w.done = true
	if w.timer != nil && w.timer.Stop() {
		w.armed = false // a timer that already fired clears it itself
	}
	if w.err == nil {
		w.err = w.buf.Flush()
	}
	w.buf.Reset(nil)
	coalescePool.Put(w.buf)
	w.buf, w.dst = nil, nil
	return w.err
}
