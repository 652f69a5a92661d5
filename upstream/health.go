package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Passive failure reasons, the "reason" label of PassiveFailures.
const (
	failDial          = "dial"
	failHeaderTimeout = "response_header_timeout"
	failStatus        = "status"
	// failBroken: the backend broke the exchange before its response
	// header ended: it reset or closed a fresh connection, or answered
	// with a head that is not HTTP (nginx's error and invalid_header).
	failBroken = "broken"
)

// Healthy reports whether the backend takes sessions: its last active check
// (if any) passed and it has fewer than Passive.MaxFails failures within
// Passive.FailDuration. Without health checks a backend is always healthy.
func (b *Backend) Healthy() bool {
	if b.healthy.Load() {
		return true // only an event (a failure, a check) makes it unhealthy
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.decideLocked("failures aged out")
}

// decideLocked works out the backend's health from its active and passive
// state now, records and reports a change (reason says why), and returns
// it. While passive failures keep it unhealthy, it arms a timer to decide
// again when they age out, so the change is logged and exported even when
// no request asks.
func (b *Backend) decideLocked(reason string) bool {
	p := b.pool
	now := p.now()
	until := b.passiveUntilLocked()
	healthy := !b.activeDown && !now.Before(until)
	if !healthy && now.Before(until) {
		b.armRecoveryLocked(until.Sub(now))
	}
	if healthy == b.healthy.Load() {
		return healthy
	}
	b.healthy.Store(healthy)
	if b.removed.Load() {
		// Out of the configuration: nothing to report (a backend of the
		// same address may be in it, and owns the series).
		return healthy
	}
	v := 0.0
	msg, level := "backend unhealthy", zap.WarnLevel
	if healthy {
		v, msg, level = 1, "backend healthy", zap.InfoLevel
	}
	p.metrics.Healthy.WithLabelValues(b.Addr).Set(v)
	if ce := p.logger.Check(level, msg); ce != nil {
		ce.Write(zap.String("backend", b.Addr), zap.String("reason", reason))
	}
	return healthy
}

// passiveUntilLocked returns when the passive failures stop making the
// backend unhealthy: when the oldest of the last MaxFails ages out. It is
// the zero time when there are fewer.
func (b *Backend) passiveUntilLocked() time.Time {
	ps := b.pool.state().cfg.Passive
	if ps.FailDuration == 0 || len(b.fails) < ps.MaxFails {
		return time.Time{}
	}
	return b.fails[0].Add(ps.FailDuration)
}

func (b *Backend) armRecoveryLocked(d time.Duration) {
	p := b.pool
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || b.removed.Load() {
		return // Healthy still decides on demand
	}
	if b.recovery == nil {
		b.recovery = time.AfterFunc(d, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			b.decideLocked("failures aged out")
		})
		return
	}
	b.recovery.Reset(d)
}

// fail records a passive failure of a request to the backend; reason is a
// failure constant and detail says more for the log.
func (b *Backend) fail(reason, detail string) {
	p := b.pool
	ps := p.state().cfg.Passive
	if ps.FailDuration == 0 {
		return
	}
	p.metrics.PassiveFailures.WithLabelValues(b.Addr, reason).Inc()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.fails) >= ps.MaxFails {
		// MaxFails may have shrunk in an Update: keep the latest.
		b.fails = append(b.fails[:0], b.fails[len(b.fails)-ps.MaxFails+1:]...)
	}
	b.fails = append(b.fails, p.now())
	b.decideLocked(detail)
}

// failStatus records a response whose status is configured as a failure.
func (b *Backend) failStatus(code int) {
	for _, sm := range b.pool.state().cfg.Passive.UnhealthyStatus {
		if sm.Matches(code) {
			b.fail(failStatus, "status "+strconv.Itoa(code))
			return
		}
	}
}

// recordCheck records the outcome of an active check: nil passed.
func (b *Backend) recordCheck(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.activeDown = err != nil
	reason := "health check passed"
	if err != nil {
		reason = err.Error()
	}
	b.decideLocked(reason)
}

// Start runs the active health checker when Config.Health.URI is set: one
// goroutine that checks every backend at once, then every
// Config.Health.Interval, until ctx ends or Close is called. An Update
// restarts it with new settings or backends, and starts or stops it when
// the URI is set or cleared, within ctx. Calling Start again, or after
// Close, does nothing.
func (p *Pool) Start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.ctx = ctx
	p.startCheckerLocked(p.state().cfg.Health)
}

// startCheckerLocked starts the checker for h unless h checks nothing. p.mu
// is held; no checker runs.
func (p *Pool) startCheckerLocked(h ActiveHealth) {
	if h.URI == "" {
		return
	}
	ctx, stop := context.WithCancel(p.ctx)
	p.stop, p.done = stop, make(chan struct{})
	go p.checkLoop(ctx, h.Interval, p.done)
}

// stopChecker stops the checker, if one runs, and waits for it to exit.
// p.updating is held, so no other call starts one meanwhile.
func (p *Pool) stopChecker() {
	p.mu.Lock()
	stop, done := p.stop, p.done
	p.stop, p.done = nil, nil
	p.mu.Unlock()
	if stop != nil {
		stop()
		<-done // outside mu: a check's outcome takes it (armRecoveryLocked)
	}
}

// Close stops the health checker and waits for it to exit. Leases taken
// from the pool keep working, with the backends' health as it was, until
// their sessions close them. Close is idempotent and always returns nil.
func (p *Pool) Close() error {
	p.updating.Lock()
	defer p.updating.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.stopChecker()
	for _, b := range p.state().backends {
		b.stopRecovery()
	}
	return nil
}

// stopRecovery stops the timer that re-decides b's health.
func (b *Backend) stopRecovery() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.recovery != nil {
		b.recovery.Stop()
	}
}

// checkLoop runs checkOnce every interval until ctx ends, then closes done.
func (p *Pool) checkLoop(ctx context.Context, interval time.Duration, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		func() {
			defer p.recoverPanic("health checks")
			p.checkOnce(ctx)
		}()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkOnce checks every backend of the pool's configuration concurrently
// and records the outcomes. A check cut short because ctx ended records
// nothing.
func (p *Pool) checkOnce(ctx context.Context) {
	st := p.state()
	var wg sync.WaitGroup
	for _, b := range st.backends {
		wg.Go(func() {
			defer p.recoverPanic("health check")
			err := p.probe(ctx, st, b)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				p.metrics.HealthCheckFailures.WithLabelValues(b.Addr).Inc()
				if ce := p.logger.Check(zap.DebugLevel, "health check failed"); ce != nil {
					ce.Write(zap.String("backend", b.Addr), zap.Error(err))
				}
			}
			b.recordCheck(err)
		})
	}
	wg.Wait()
}

// errHealthStatus is an active check answered with the wrong status.
var errHealthStatus = errors.New("unexpected status")

// healthReadLimit bounds how much of a health response body is read: the
// status is what counts, the rest only lets the backend finish cleanly.
const healthReadLimit = 4 << 10

// probe sends one health check request to b on a connection of its own,
// closed afterwards, with st's settings, and returns why b failed it (nil:
// it passed).
func (p *Pool) probe(ctx context.Context, st *poolState, b *Backend) error {
	h := st.cfg.Health
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	nc, err := b.dial(ctx, st, nil) // a check never resumes a session's TLS session
	if err != nil {
		return fmt.Errorf("health check: dial %s: %w", b.Addr, err)
	}
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(aLongTimeAgo) })
	defer stop()

	req := &http.Request{
		Method: http.MethodGet,
		URL:    &url.URL{Path: h.URI},
		Host:   b.hostHeader(),
		Header: http.Header{
			"Connection": {"close"},
			"User-Agent": {"roamgate-health-check"},
		},
		RequestURI: h.URI,
	}
	bw := bufio.NewWriterSize(nc, 512)
	if err := writeRequestHeader(bw, req, false, false); err != nil {
		return fmt.Errorf("health check: write %s: %w", b.Addr, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("health check: write %s: %w", b.Addr, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), req)
	if err != nil {
		return fmt.Errorf("health check: read %s: %w", b.Addr, err)
	}
	_, _ = io.CopyN(io.Discard, resp.Body, healthReadLimit)
	_ = resp.Body.Close()
	if !h.wants(resp.StatusCode) {
		return fmt.Errorf("health check: %s: %w %d", b.Addr, errHealthStatus, resp.StatusCode)
	}
	return nil
}

// wants reports whether code is a healthy answer.
func (h ActiveHealth) wants(code int) bool {
	switch {
	case h.Status == 0:
		return code/100 == 2
	case h.StatusClass:
		return code/100 == h.Status/100
	}
	return code == h.Status
}

// recoverPanic logs a panic of a background goroutine with its stack
// instead of crashing the process; what names the work.
func (p *Pool) recoverPanic(what string) {
	if r := recover(); r != nil {
		p.logger.Error("panic in upstream background work", zap.String("work", what),
			zap.String("panic", fmt.Sprint(r)), zap.ByteString("stack", debug.Stack()))
	}
}
