package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

const (
	// settleTimeout bounds the wait for a server to close the connections of
	// a finished run before the next target starts. A client's close is one
	// UDP packet; when it is lost the server closes the connection at its
	// idle timeout (30 s for both HTTP/3 servers), so the wait covers that.
	settleTimeout = 35 * time.Second
	// rssPoll is how often settledRSS reads RSS; rssSettleTimeout bounds it.
	rssPoll          = 50 * time.Millisecond
	rssSettleTimeout = 5 * time.Second
	// migrationWindow is the part of the storm's measured run in which the
	// clients migrate, spread evenly: from 10 % to 90 %.
	migrationStart, migrationSpan = 0.1, 0.8
	// transferRate is the slowest transfer rate the transfer timeout
	// allows for, in bytes per second.
	transferRate = 4 << 20
)

// scenario is one kind of run, measured on each target it applies to.
type scenario struct {
	name    string
	title   func(o *options) string
	applies func(t *target) bool
	once    func(ctx context.Context, b *bench, t *target) (figures, error)
}

// scenarioFor returns the definition of a scenario name.
func scenarioFor(name string) scenario {
	h3Builtin := func(t *target) bool { return t.builtin && t.kind == kindH3 }
	builtin := func(t *target) bool { return t.builtin }
	anyTarget := func(*target) bool { return true }
	switch name {
	case scLatency:
		return scenario{name, func(o *options) string {
			return fmt.Sprintf("1 connection × 1 stream, GET of %s", formatSize(o.size))
		}, anyTarget, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.load(ctx, t, 1, 1, false, b.o.profileOf == scLatency)
		}}
	case scThroughput:
		return scenario{name, func(o *options) string {
			return fmt.Sprintf("%d connections × %d streams, GET of %s", o.conns, o.streams, formatSize(o.size))
		}, anyTarget, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.load(ctx, t, b.o.conns, b.o.streams, false, b.o.profileOf == scThroughput)
		}}
	case scDownload:
		return scenario{name, func(o *options) string {
			return fmt.Sprintf("one GET of %s through one connection", formatSize(o.streamSize))
		}, builtin, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.transfer(ctx, t, false)
		}}
	case scUpload:
		return scenario{name, func(o *options) string {
			return fmt.Sprintf("one POST of %s through one connection", formatSize(o.streamSize))
		}, builtin, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.transfer(ctx, t, true)
		}}
	case scStorm:
		return scenario{name, func(o *options) string {
			title := fmt.Sprintf("%d clients with %d requests in flight each, GET of %s, each migrating once to a new UDP socket under load", o.storm, o.stormStreams, formatSize(o.size))
			if o.faults != nil {
				title += "; through a relay with " + settingsOf(o.faults).String() + ", every body checked by hash"
			}
			return title
		}, h3Builtin, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.load(ctx, t, b.o.storm, b.o.stormStreams, true, b.o.profileOf == scStorm)
		}}
	case scIdle:
		return scenario{name, func(o *options) string {
			return fmt.Sprintf("%d connections, one GET each, then held open: server memory per connection", o.idle)
		}, h3Builtin, func(ctx context.Context, b *bench, t *target) (figures, error) {
			return b.idleOnce(ctx, t)
		}}
	}
	panic("unknown scenario " + name)
}

// runScenario measures sc on every target it applies to, --rounds times,
// the targets' order rotating by one each round so none always goes first.
func (b *bench) runScenario(ctx context.Context, sc scenario) (*scenarioReport, error) {
	rep := &scenarioReport{Name: sc.name, Title: sc.title(b.o)}
	var ts []*target
	for _, t := range b.targets {
		if sc.applies(t) {
			ts = append(ts, t)
			rep.Targets = append(rep.Targets, &targetReport{Target: t.name, Rounds: []figures{}})
		}
	}
	if len(ts) == 0 {
		return rep, nil
	}
	for round := range b.o.rounds {
		for i := range ts {
			k := (i + round) % len(ts)
			t := ts[k]
			fmt.Fprintf(b.progress, "  %s round %d/%d: %s ... ", sc.name, round+1, b.o.rounds, t.name)
			start := time.Now()
			f, err := sc.once(ctx, b, t)
			if ctx.Err() != nil {
				fmt.Fprintln(b.progress, "interrupted")
				return nil, context.Cause(ctx)
			}
			if err != nil {
				f.Failed = err.Error()
				fmt.Fprintf(b.progress, "failed: %v\n", err)
				if t.child != nil && t.child.exited() {
					return nil, fmt.Errorf("%s %s: %w", sc.name, t.name, err)
				}
			} else {
				fmt.Fprintf(b.progress, "%s (%.1fs)\n", progressLine(sc.name, f), time.Since(start).Seconds())
			}
			f.Round = round + 1
			rep.Targets[k].Rounds = append(rep.Targets[k].Rounds, f)
		}
	}
	for i, tr := range rep.Targets {
		tr.Summary = summarize(tr.Rounds)
		tr.Checks = b.checks(sc.name, ts[i], tr)
	}
	return rep, nil
}

// progressLine is the one-line result of a run, for the progress log.
func progressLine(name string, f figures) string {
	switch name {
	case scDownload, scUpload:
		return fmt.Sprintf("%.0f MB/s, %d errors", f.MBPerSec, f.Errors)
	case scIdle:
		if f.Idle != nil {
			return fmt.Sprintf("%.1f KiB per connection, %d errors", f.Idle.PerConnBytes/1024, f.Errors)
		}
	}
	line := fmt.Sprintf("%.0f req/s, p50 %s, %d errors, %d handshakes", f.ReqPerSec, fmtUS(f.P50US), f.Errors, f.Handshakes)
	if f.BodiesVerified != nil {
		line += fmt.Sprintf("; relay dropped %d of %d packets; %d bodies verified, %d mismatched", *f.RelayDropped, *f.RelayDropped+*f.RelayForwarded, *f.BodiesVerified, *f.BodiesMismatched)
	}
	return line
}

// load runs conns connections × streams concurrent request loops of GETs
// against t: dial, warm up (every stream at least one request, so roamgate
// has dialled its upstream connections), then measure for --duration.
// With migrate (the storm), each connection migrates once during the
// measured run. With profile (the scenario is --profile-scenario), roamgate's
// first measured run is profiled when --cpuprofile or --heapprofile ask.
func (b *bench) load(ctx context.Context, t *target, conns, streams int, migrate, profile bool) (f figures, err error) {
	workers := conns * streams
	if t.kind == kindH1 {
		// HTTP/1.1 carries one request at a time: a connection per stream.
		conns, streams = workers, 1
	}
	// In the faulted storm the clients reach t through a relay that
	// impairs the path, and every body is checked by hash.
	faulted := migrate && b.o.faults != nil && t.kind == kindH3 && t.builtin
	timeout := b.o.timeout
	var rl *impair.Relay
	if faulted {
		timeout = max(timeout, faultTimeout)
		if rl, err = startFaultRelay(t, *b.o.faults); err != nil {
			return f, err
		}
	}
	p := newClientPool(t, conns, timeout)
	if rl != nil {
		p.addr, p.handshakeIdle, p.idPrefix = rl.Addr().String(), timeout, newIDPrefix()
	}
	defer func() {
		if rl != nil {
			heal(rl)
		}
		err = errors.Join(err, b.closeAndSettle(ctx, t, p))
		if rl != nil {
			err = errors.Join(err, rl.Close())
		}
	}()
	r := request{method: "GET", path: t.getPath, wantBytes: -1, timeout: timeout, hashed: faulted}
	if t.builtin {
		r.wantBytes = b.o.size
	}
	// In the storm, the backend records which of its connections each
	// client's requests came over (roamgate only: the other HTTP/3
	// targets have no backend, or forward no header).
	trackSets := migrate && t.isRoamgate() && t.backendControl != ""
	r.label = trackSets
	pre, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	if err := p.open(ctx); err != nil {
		return f, err
	}
	if trackSets {
		if err := b.ctl.resetSets(ctx, t.backendControl); err != nil {
			return f, err
		}
	}
	warm := p.run(ctx, workers, streams, phase{end: time.Now().Add(b.o.warmupFor()), minOne: true}, r)

	before, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	b.resetPeak(t)
	ph := phase{end: time.Now().Add(b.o.duration)}
	if faulted {
		ph.tail = faultMigrationTail
	}
	if migrate {
		start, d := time.Now(), b.o.duration
		// Each connection migrates once, by its first worker, while its
		// other workers' requests are in flight.
		ph.migrateAt = func(w int) time.Time {
			if w%streams != 0 {
				return time.Time{}
			}
			frac := migrationStart + migrationSpan*float64(w/streams)/float64(max(conns-1, 1))
			return start.Add(time.Duration(frac * float64(d)))
		}
	}
	var profiled chan error
	if profile && t.isRoamgate() && b.o.cpuProfile != "" && !b.profiled {
		b.profiled = true
		profiled = make(chan error, 1)
		go func() { profiled <- b.profileRoamgate(ctx, t, b.o.duration, b.o.cpuProfile) }()
	}
	res := p.run(ctx, workers, streams, ph, r)
	var relayed impair.Stats
	if rl != nil {
		relayed = rl.Stats()
	}
	if profiled != nil {
		if err := <-profiled; err != nil {
			return f, err
		}
	}
	if ctx.Err() != nil {
		return f, context.Cause(ctx)
	}
	after, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	if profile && t.isRoamgate() && b.o.heapProfile != "" && !b.heapProfiled {
		b.heapProfiled = true
		if err := b.fetchProfile(ctx, t, "heap?gc=1", "heap", b.o.heapProfile); err != nil {
			return f, err
		}
	}

	f.Conns = conns
	f.Requests = int64(len(res.lat))
	f.Seconds = res.elapsed.Seconds()
	f.ReqPerSec = float64(f.Requests) / f.Seconds
	f.P50US = us(percentile(res.lat, 50))
	f.P99US = us(percentile(res.lat, 99))
	f.MaxUS = us(percentile(res.lat, 100))
	f.Errors = warm.errors + res.errors + p.dialErrors.Load() + res.migrateErr
	f.ErrorSamples = p.errs.samples()
	f.Handshakes = p.handshakes.Load()
	applySamples(&f, t, pre, before, after, float64(f.Requests))
	if rl != nil {
		bodies := warm.bodies
		bodies.add(res.bodies)
		f.RelayForwarded, f.RelayDropped = ptr(relayed.Forwarded), ptr(relayed.Dropped)
		f.BodiesVerified, f.BodiesMismatched, f.BodiesTruncated = ptr(bodies.verified), ptr(bodies.mismatched), ptr(bodies.truncated)
	}
	if migrate {
		f.Migrations = res.migrations
		f.MigrationFailures = res.migrateErr
		f.MigrateP50US = us(percentile(res.migrateLat, 50))
		f.MigrateMaxUS = us(percentile(res.migrateLat, 100))
		if t.isRoamgate() {
			f.SessionMoves = ptr(delta(before, after, mSessionMoves))
			f.PathChanges = ptr(delta(before, after, mPathChanges))
		}
	}
	if trackSets {
		sets, err := b.ctl.sets(ctx, t.backendControl)
		if err != nil {
			return f, err
		}
		sf := sets.figures(streams)
		f.Streams = streams
		f.UpstreamPerClient = &sf.PerClient
		f.UpstreamMaxPerClient = &sf.MaxPerConn
		f.SetsChanged = &sf.Changed
		f.SetsGrew = &sf.Grew
		// Over the sessions' whole lives, warm-up included: a client
		// may reach its last connection after the warm-up.
		f.UpstreamOpenedAll = ptr(delta(pre, after, mUpstreamOpened))
		f.SharedUpstream = &sf.Shared
		f.TrackedClients = &sf.Clients
	}
	return f, nil
}

// transfer sends one large GET (download) or POST (upload) through one
// connection, after a small request that dials it (and roamgate's upstream
// connection).
func (b *bench) transfer(ctx context.Context, t *target, upload bool) (f figures, err error) {
	p := newClientPool(t, 1, b.o.timeout)
	defer func() { err = errors.Join(err, b.closeAndSettle(ctx, t, p)) }()
	size := b.o.streamSize
	pre, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	if err := p.open(ctx); err != nil {
		return f, err
	}
	warm := p.run(ctx, 1, 1, phase{end: time.Now(), minOne: true}, request{method: "GET", path: "/", wantBytes: b.o.size, timeout: b.o.timeout})
	r := request{method: "GET", path: "/bytes?n=" + strconv.FormatInt(size, 10), wantBytes: size,
		timeout: b.o.timeout + time.Duration(float64(size)/transferRate*float64(time.Second))}
	if upload {
		r = request{method: "POST", path: "/upload", upload: size, timeout: r.timeout}
	}
	before, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	b.resetPeak(t)
	res := p.run(ctx, 1, 1, phase{end: time.Now(), minOne: true}, r)
	if ctx.Err() != nil {
		return f, context.Cause(ctx)
	}
	after, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	f.Conns = 1
	f.Requests = int64(len(res.lat))
	f.Seconds = res.elapsed.Seconds()
	f.Errors = warm.errors + res.errors + p.dialErrors.Load()
	f.ErrorSamples = p.errs.samples()
	f.Handshakes = p.handshakes.Load()
	f.Bytes = size
	if f.Requests == 1 {
		f.MBPerSec = float64(size) / 1e6 / f.Seconds
		f.P50US, f.P99US, f.MaxUS = us(res.elapsed), us(res.elapsed), us(res.elapsed)
	}
	// CPU per MB moved, not per request.
	applySamples(&f, t, pre, before, after, float64(size)/1e6)
	return f, nil
}

// idleOnce opens --idle connections to t, one GET each, holds them, and
// reads the server's memory before, while held, and after they closed;
// each reading after a garbage collection in the server, once RSS is
// stable. The growth per connection is RSS held minus the RSS before the
// first round, over the connections.
func (b *bench) idleOnce(ctx context.Context, t *target) (f figures, err error) {
	n := b.o.idle
	p := newClientPool(t, n, b.o.timeout)
	closed := false
	defer func() {
		if !closed {
			err = errors.Join(err, b.closeAndSettle(ctx, t, p))
		}
	}()
	rssBefore, err := b.settledRSS(ctx, t)
	if err != nil {
		return f, err
	}
	// Growth is counted from the server's first reading: a Go server keeps
	// some memory after its connections closed (partly filled spans) and
	// reuses it first, so later rounds would count less than a fresh
	// server needs.
	baseline, ok := b.idleBaseline[t.name]
	if !ok {
		baseline = rssBefore
		b.idleBaseline[t.name] = baseline
	}
	pre, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	start := time.Now()
	if err := p.open(ctx); err != nil {
		return f, err
	}
	res := p.run(ctx, n, 1, phase{end: time.Now(), minOne: true}, request{method: "GET", path: t.getPath, wantBytes: b.o.size, timeout: b.o.timeout})
	opened := time.Since(start)
	if ctx.Err() != nil {
		return f, context.Cause(ctx)
	}
	rssHeld, err := b.settledRSS(ctx, t)
	if err != nil {
		return f, err
	}
	held, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}
	closed = true
	if err := b.closeAndSettle(ctx, t, p); err != nil {
		return f, err
	}
	rssClosed, err := b.settledRSS(ctx, t)
	if err != nil {
		return f, err
	}
	after, err := b.sample(ctx, t)
	if err != nil {
		return f, err
	}

	f.Conns = n
	f.Requests = int64(len(res.lat))
	f.Seconds = opened.Seconds()
	f.P50US = us(percentile(res.lat, 50))
	f.P99US = us(percentile(res.lat, 99))
	f.MaxUS = us(percentile(res.lat, 100))
	f.Errors = res.errors + p.dialErrors.Load()
	f.ErrorSamples = p.errs.samples()
	f.Handshakes = p.handshakes.Load()
	f.ServerConns = serverConnsBetween(t, pre, held)
	f.RSS = ptr(rssHeld)
	idle := &idleFigures{
		Conns:             n,
		OpenSeconds:       opened.Seconds(),
		RSSBefore:         rssBefore,
		RSSHeld:           rssHeld,
		RSSAfterClose:     rssClosed,
		Baseline:          baseline,
		PerConnBytes:      float64(rssHeld-baseline) / float64(n),
		HeapPerConnBytes:  float64(held.stats.HeapBytes-pre.stats.HeapBytes) / float64(n),
		GoroutinesPerConn: float64(held.stats.Goroutines-pre.stats.Goroutines) / float64(n),
	}
	if t.backendControl != "" {
		idle.UpstreamHeld = ptr(held.backendStats.Open - pre.backendStats.Open)
		idle.UpstreamAfterClose = ptr(after.backendStats.Open - pre.backendStats.Open)
	}
	if t.isRoamgate() {
		f.UpstreamOpened = ptr(delta(pre, held, mUpstreamOpened))
	}
	f.Idle = idle
	return f, nil
}

// applySamples fills in what the servers' samples tell: CPU per unit of
// work (a request, or a MB in transfers) between before and after, RSS at
// the end and its peak since resetPeak, roamgate's upstream connections
// opened in the measured run, and the connections the server saw opened
// since pre (before dialling), which must equal the handshakes.
func applySamples(f *figures, t *target, pre, before, after sample, units float64) {
	if units <= 0 {
		units = math.NaN()
	}
	if before.serverOK && after.serverOK {
		cpu := float64(after.server.CPU-before.server.CPU) / float64(time.Microsecond) / units
		if !math.IsNaN(cpu) {
			f.CPUUS = ptr(cpu)
		}
		f.RSS = ptr(after.server.RSS)
		f.PeakRSS = ptr(after.server.HWM)
		f.PeakGrowth = ptr(max(0, after.server.HWM-before.server.RSS))
	}
	if before.backendOK && after.backendOK {
		cpu := float64(after.backend.CPU-before.backend.CPU) / float64(time.Microsecond) / units
		if !math.IsNaN(cpu) {
			f.BackendCPUUS = ptr(cpu)
		}
	}
	if t.isRoamgate() {
		f.UpstreamOpened = ptr(delta(before, after, mUpstreamOpened))
		f.ServerErrors = ptr(delta(pre, after, mRequests))
	}
	f.ServerConns = serverConnsBetween(t, pre, after)
}

// serverConnsBetween is how many client connections the server saw opened
// between two samples: roamgate's HTTP/3 sessions, h3-plain's QUIC
// connections, the backend's TCP connections for h1-direct; nil for extra
// targets.
func serverConnsBetween(t *target, pre, after sample) *int64 {
	switch {
	case t.isRoamgate():
		return ptr(delta(pre, after, mSessionsOpened))
	case t.builtin:
		return ptr(after.stats.Opened - pre.stats.Opened)
	}
	return nil
}

// closeAndSettle closes the pool's connections and waits until the server
// has closed them too (roamgate's sessions, h3-plain's and the backend's
// open connections back to zero), so the next run starts on a quiet server.
func (b *bench) closeAndSettle(ctx context.Context, t *target, p *clientPool) error {
	p.close()
	if !t.builtin {
		pause(ctx, 200*time.Millisecond)
		return nil
	}
	deadline := time.Now().Add(settleTimeout)
	for {
		s, err := b.sample(ctx, t)
		if err != nil {
			return err
		}
		open := s.stats.Open
		if t.isRoamgate() {
			open = int64(s.metrics[mSessionsActive])
		}
		if open == 0 && s.backendStats.Open == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still has %d client connections (backend: %d) open %v after the clients closed theirs", t.name, open, s.backendStats.Open, settleTimeout)
		}
		pause(ctx, 20*time.Millisecond)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
}

// settledRSS collects garbage in t's server and returns its RSS once
// stable: three readings rssPoll apart within 64 KiB or 0.2 % of each
// other (or the last reading after rssSettleTimeout).
func (b *bench) settledRSS(ctx context.Context, t *target) (int64, error) {
	if err := b.ctl.gc(ctx, t.control); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(rssSettleTimeout)
	var last int64 = -1
	stable := 0
	for {
		s, err := readProc(t.pid, b.ticks)
		if err != nil {
			return 0, err
		}
		if last >= 0 && math.Abs(float64(s.RSS-last)) <= max(64<<10, 0.002*float64(last)) {
			stable++
		} else {
			stable = 0
		}
		last = s.RSS
		if stable >= 2 || time.Now().After(deadline) {
			return last, nil
		}
		pause(ctx, rssPoll)
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
	}
}

// resetPeak resets the peak RSS of t's server, so the next reading is the
// peak of the measured run; where the kernel refuses, the peak stays the
// process's lifetime peak.
func (b *bench) resetPeak(t *target) {
	if t.pid != 0 && t.builtin {
		_ = resetPeak(t.pid)
	}
}

// profileRoamgate writes a CPU profile of roamgate over d (whole seconds,
// at least one) to path, from its admin endpoint's /debug/pprof/profile.
func (b *bench) profileRoamgate(ctx context.Context, t *target, d time.Duration, path string) error {
	secs := max(1, int(math.Round(d.Seconds())))
	return b.fetchProfile(ctx, t, fmt.Sprintf("profile?seconds=%d", secs), "CPU", path)
}

// fetchProfile writes roamgate's /debug/pprof/WHAT to path.
func (b *bench) fetchProfile(ctx context.Context, t *target, what, kind, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/%s", t.admin, what)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: b.ctl.hc.Transport} // no timeout: the profile takes d
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s profile of roamgate: %w", kind, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s profile of roamgate: status %d", kind, resp.StatusCode)
	}
	prof, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s profile of roamgate: %w", kind, err)
	}
	if err := os.WriteFile(path, prof, 0o644); err != nil {
		return fmt.Errorf("%s profile of roamgate: %w", kind, err)
	}
	fmt.Fprintf(b.progress, "(roamgate's %s profile of this run is in %s) ", kind, path)
	return nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func ptr[T any](v T) *T { return &v }
