package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/roamgate/roamgate/proxy/h3client"
)

const (
	// dialParallel bounds the handshakes in progress at once: quic-go's
	// server queues at most 32 accepted connections (the accept queue).
	dialParallel = 32
	// clientKeepAlive keeps held connections alive past the servers' 30 s
	// idle timeout (the idle scenario holds thousands while it dials more).
	clientKeepAlive = 10 * time.Second
	// redialPause keeps a worker whose connection cannot be dialled from
	// spinning.
	redialPause = 20 * time.Millisecond
)

// request is what one request of a load does.
type request struct {
	method    string
	path      string
	wantBytes int64 // expected response body length; -1: any
	upload    int64 // request body length (POST); 0: none
	timeout   time.Duration
	label     bool // send clientHeader: the slot and its migration phase
	// hashed makes each request GET /body?id=ID with an id of its own and
	// checks the body against the id's hash (wantBytes long): the faulted
	// storm (path is unused).
	hashed bool
}

// clientPool is the load generator's side of one run against one target:
// n client connections. For HTTP/3 each is an h3client.Conn, a QUIC
// connection of its own on a UDP socket of its own; for HTTP/1.1 each is a
// net/http Transport limited to one keep-alive TCP connection. Every
// handshake (QUIC) or TCP connection is counted as it is dialled, so a
// connection that died and was dialled again shows.
type clientPool struct {
	t       *target
	addr    string            // HTTP/3: where to dial, t.addr unless a fault relay is in between
	slots   []*slot           // HTTP/3
	h1      []*http.Transport // HTTP/1.1
	timeout time.Duration     // of one handshake, and of one migration
	// handshakeIdle is quic-go's handshake idle timeout; 0: its default.
	handshakeIdle time.Duration
	// idPrefix starts the ids of hashed requests; nextID numbers them.
	idPrefix string
	nextID   atomic.Uint64

	handshakes atomic.Int64
	dialErrors atomic.Int64 // failed handshakes; request errors are counted by run
	errs       errorLog
}

// slot is one HTTP/3 client connection, re-dialled when it dies.
type slot struct {
	label    string      // "N", the slot's index, for clientHeader
	migrated atomic.Bool // its connection migrated
	mu       sync.Mutex
	conn     *h3client.Conn
}

// newClientPool prepares n connections to t (HTTP/3: QUIC connections,
// dialled by open; HTTP/1.1: TCP connections, dialled on first use).
func newClientPool(t *target, n int, timeout time.Duration) *clientPool {
	p := &clientPool{t: t, addr: t.addr, timeout: timeout}
	if t.kind == kindH1 {
		d := &net.Dialer{Timeout: timeout}
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			p.handshakes.Add(1)
			return d.DialContext(ctx, network, addr)
		}
		p.h1 = make([]*http.Transport, n)
		for i := range p.h1 {
			p.h1[i] = &http.Transport{
				DialContext:         dial,
				MaxIdleConnsPerHost: 1,
				MaxConnsPerHost:     1,
				DisableCompression:  true,
			}
		}
		return p
	}
	p.slots = make([]*slot, n)
	for i := range p.slots {
		p.slots[i] = &slot{label: strconv.Itoa(i)}
	}
	return p
}

// open dials every HTTP/3 connection, dialParallel at a time. A failed
// dial counts as an error; its slot is dialled again on first use. It
// fails only when ctx ends.
func (p *clientPool) open(ctx context.Context) error {
	sem := make(chan struct{}, dialParallel)
	var wg sync.WaitGroup
	for _, s := range p.slots {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return context.Cause(ctx)
		}
		wg.Go(func() {
			defer func() { <-sem }()
			_, _ = p.conn(ctx, s)
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// conn returns s's connection, dialling one when it has none.
func (p *clientPool) conn(ctx context.Context, s *slot) (*h3client.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		return s.conn, nil
	}
	p.handshakes.Add(1)
	dctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	c, err := h3client.Dial(dctx, p.addr, p.t.tls, &quic.Config{KeepAlivePeriod: clientKeepAlive, HandshakeIdleTimeout: p.handshakeIdle})
	if err != nil {
		if ctx.Err() == nil {
			p.dialErrors.Add(1)
			p.errs.add(err)
		}
		return nil, err
	}
	s.conn = c
	return c, nil
}

// broken drops s's connection c when it has died, so the next use dials
// again (and counts the handshake).
func (p *clientPool) broken(s *slot, c *h3client.Conn) {
	if c.Context().Err() == nil {
		return
	}
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	s.mu.Unlock()
	_ = c.Close()
}

// close closes every connection and socket of the pool.
func (p *clientPool) close() {
	for _, tr := range p.h1 {
		tr.CloseIdleConnections()
	}
	// At most closeConcurrency at a time: thousands of CONNECTION_CLOSE
	// packets at once can overflow the server's socket buffer, and a lost
	// one leaves its connection open until the idle timeout.
	sem := make(chan struct{}, closeConcurrency)
	var wg sync.WaitGroup
	for _, s := range p.slots {
		s.mu.Lock()
		c := s.conn
		s.conn = nil
		s.mu.Unlock()
		if c != nil {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				_ = c.Close()
			})
		}
	}
	wg.Wait()
}

// closeConcurrency bounds the connections clientPool.close closes at once.
const closeConcurrency = 64

// phase is one stretch of load: workers start requests until end, and
// each makes at least one when minOne is set. With migrateAt, each
// worker's connection migrates once, at migrateAt(worker), between two of
// its requests, and sends at least one request afterwards, and goes on for
// at least tail after it.
type phase struct {
	end       time.Time
	minOne    bool
	migrateAt func(worker int) time.Time
	tail      time.Duration
}

// runResult is what one phase measured.
type runResult struct {
	lat        latencies // sorted
	errors     int64     // truncated bodies included, mismatched ones not
	elapsed    time.Duration
	migrations int64
	migrateErr int64
	migrateLat latencies // sorted
	bodies     bodyCounts
}

// bodyCounts are the outcomes of the hash checks of hashed requests.
type bodyCounts struct {
	verified   int64 // whole and its own
	mismatched int64 // with bytes not its own
	truncated  int64 // its own but cut short (also an error)
}

func (c *bodyCounts) add(o bodyCounts) {
	c.verified += o.verified
	c.mismatched += o.mismatched
	c.truncated += o.truncated
}

// workerResult is one worker's share of a runResult.
type workerResult struct {
	lat        latencies
	errors     int64
	migrated   bool
	migrateErr bool
	migrateLat time.Duration
	bodies     bodyCounts
}

// run runs one phase with workers concurrent request loops; worker w uses
// connection w/perConn.
func (p *clientPool) run(ctx context.Context, workers, perConn int, ph phase, r request) runResult {
	results := make([]workerResult, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { p.work(ctx, w, w/perConn, ph, r, &results[w]) })
	}
	wg.Wait()
	out := runResult{elapsed: time.Since(start)}
	parts := make([]latencies, workers)
	var mig latencies
	for i, wr := range results {
		parts[i] = wr.lat
		out.errors += wr.errors
		out.bodies.add(wr.bodies)
		if wr.migrated {
			out.migrations++
			mig = append(mig, wr.migrateLat)
		}
		if wr.migrateErr {
			out.migrateErr++
		}
	}
	out.lat = merge(parts)
	out.migrateLat = merge([]latencies{mig})
	return out
}

// work is one worker's request loop.
func (p *clientPool) work(ctx context.Context, w, slotIndex int, ph phase, r request, res *workerResult) {
	var migrateAt time.Time
	if ph.migrateAt != nil {
		migrateAt = ph.migrateAt(w)
	}
	pendingMigration := !migrateAt.IsZero()
	sentAfterMigration := true
	var tailEnd time.Time
	for first := true; ctx.Err() == nil; first = false {
		now := time.Now()
		if now.After(ph.end) && !(first && ph.minOne) && !pendingMigration && sentAfterMigration && !now.Before(tailEnd) {
			return
		}
		if pendingMigration && !now.Before(migrateAt) {
			pendingMigration = false
			sentAfterMigration = false
			p.migrate(ctx, p.slots[slotIndex], res)
			tailEnd = time.Now().Add(ph.tail)
		}
		var rt http.RoundTripper
		var s *slot
		var c *h3client.Conn
		label := ""
		if p.h1 != nil {
			rt = p.h1[slotIndex]
		} else {
			s = p.slots[slotIndex]
			if r.label {
				label = s.label + "/0"
				if s.migrated.Load() {
					label = s.label + "/1"
				}
			}
			var err error
			if c, err = p.conn(ctx, s); err != nil {
				pause(ctx, redialPause) // counted by conn
				continue
			}
			rt = c
		}
		id := ""
		if r.hashed {
			id = p.idPrefix + "-" + strconv.FormatUint(p.nextID.Add(1), 10)
		}
		begin := time.Now()
		if err := p.do(ctx, rt, r, label, id); err != nil {
			if ctx.Err() != nil {
				return
			}
			switch {
			case isMismatch(err):
				// Answered, if wrongly: the phase may end on it.
				res.bodies.mismatched++
				sentAfterMigration = true
			case isTruncated(err):
				res.bodies.truncated++
				res.errors++
			default:
				res.errors++
			}
			p.errs.add(err)
			if c != nil {
				p.broken(s, c)
			}
			continue
		}
		res.lat = append(res.lat, time.Since(begin))
		if r.hashed {
			res.bodies.verified++
		}
		sentAfterMigration = true
	}
}

// migrate moves the slot's connection to a new UDP socket. The worker that
// calls it is the connection's only one, so no request is in flight during
// the switch (quic-go client pitfall 4; h3client also holds requests off).
func (p *clientPool) migrate(ctx context.Context, s *slot, res *workerResult) {
	c, err := p.conn(ctx, s)
	if err != nil {
		res.migrateErr = true
		return
	}
	mctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	begin := time.Now()
	if err := c.Migrate(mctx); err != nil {
		if ctx.Err() == nil {
			res.migrateErr = true
			p.errs.add(fmt.Errorf("migrate: %w", err))
			p.broken(s, c)
		}
		return
	}
	res.migrated = true
	res.migrateLat = time.Since(begin)
	s.migrated.Store(true)
}

// do sends one request and reads the whole response, checking its status
// and length, and with r.hashed its body against the hash of id. A label
// goes in clientHeader.
func (p *clientPool) do(ctx context.Context, rt http.RoundTripper, r request, label, id string) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	var body io.Reader
	if r.upload > 0 {
		body = &patternReader{left: r.upload}
	}
	path := r.path
	if r.hashed {
		path = "/body?id=" + id
	}
	req, err := http.NewRequestWithContext(ctx, r.method, p.t.base+path, body)
	if err != nil {
		return err
	}
	if r.upload > 0 {
		req.ContentLength = r.upload
	}
	if label != "" {
		req.Header.Set(clientHeader, label)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if r.upload > 0 {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64))
		if err != nil {
			return fmt.Errorf("read response: %w", err)
		}
		if resp.StatusCode != http.StatusOK || string(b) != strconv.FormatInt(r.upload, 10) {
			return fmt.Errorf("upload of %d bytes: status %d, answer %q", r.upload, resp.StatusCode, b)
		}
		return nil
	}
	if r.hashed {
		// One byte more than the body, to see one too long.
		b, err := io.ReadAll(io.LimitReader(resp.Body, r.wantBytes+1))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return verifyBody(id, r.wantBytes, b, err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if r.wantBytes >= 0 && n != r.wantBytes {
		return fmt.Errorf("body of %d bytes, want %d", n, r.wantBytes)
	}
	return nil
}

// pause waits for d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// patternChunk is what patternReader repeats.
var patternChunk = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = 'x'
	}
	return b
}()

// patternReader yields left bytes of 'x', without allocating.
type patternReader struct{ left int64 }

func (r *patternReader) Read(b []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(int64(len(b)), r.left)], patternChunk)
	r.left -= int64(n)
	return n, nil
}

// errorLog keeps the first few distinct error messages.
type errorLog struct {
	mu    sync.Mutex
	first []string
}

// maxErrorSamples is how many distinct messages errorLog keeps.
const maxErrorSamples = 3

func (l *errorLog) add(err error) {
	msg := err.Error()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.first) < maxErrorSamples && !slices.Contains(l.first, msg) {
		l.first = append(l.first, msg)
	}
}

// samples returns the messages kept.
func (l *errorLog) samples() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.first...)
}
