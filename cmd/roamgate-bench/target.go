package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// targetKind is the protocol the load generator speaks to a target.
type targetKind int

const (
	kindH3 targetKind = iota
	kindH1
)

// target is one server under load, and where to read its figures.
type target struct {
	name    string
	kind    targetKind
	builtin bool   // one of ours: answers /bytes and /upload, has a control endpoint
	base    string // scheme://authority of requests
	getPath string // path and query of the GETs of latency and throughput
	addr    string // HTTP/3: the UDP address to dial
	tls     *tls.Config

	pid            int    // the server process; 0: unknown (no CPU or RSS)
	backendPID     int    // the backend behind roamgate
	control        string // the server child's control endpoint
	backendControl string // the backend's, behind roamgate
	admin          string // roamgate's admin endpoint (/metrics)
	child          *child // the server child, to notice its death
}

// isRoamgate reports whether t has roamgate's metrics.
func (t *target) isRoamgate() bool { return t.admin != "" }

// extraTarget is an HTTP/3 URL from the command line.
func extraTarget(u *url.URL, o *options) *target {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	path := u.RequestURI()
	return &target{
		name:    u.String(),
		kind:    kindH3,
		base:    "https://" + u.Host,
		getPath: path,
		addr:    net.JoinHostPort(host, port),
		tls:     &tls.Config{ServerName: host, InsecureSkipVerify: o.insecure}, // only when --insecure asks for it
		pid:     o.pids[u.String()],
	}
}

// Roamgate's metrics the benchmark reads: each is summed over its labels
// (sessions over proto h3 only).
const (
	mUpstreamOpened = "roamgate_upstream_conns_opened_total"
	mSessionsOpened = "roamgate_sessions_opened_total"
	mSessionsActive = "roamgate_sessions_active"
	mSessionMoves   = "roamgate_upstream_session_moves_total"
	mPathChanges    = "roamgate_path_changes_total"
	mRequests       = "roamgate_requests_total" // non-2xx classes only
)

// sample is what a target's processes and endpoints say at one moment.
type sample struct {
	server, backend     procSample
	serverOK, backendOK bool
	stats, backendStats childStats // from the control endpoints
	metrics             map[string]float64
}

// sample reads t's processes, control endpoints and metrics.
func (b *bench) sample(ctx context.Context, t *target) (sample, error) {
	var s sample
	if t.child != nil && t.child.exited() {
		return s, fmt.Errorf("%s exited%s", t.name, t.child.logs.excerpt())
	}
	var err error
	if t.pid != 0 {
		if s.server, err = readProc(t.pid, b.ticks); err != nil {
			return s, err
		}
		s.serverOK = true
	}
	if t.backendPID != 0 {
		if s.backend, err = readProc(t.backendPID, b.ticks); err != nil {
			return s, err
		}
		s.backendOK = true
	}
	if t.control != "" {
		if s.stats, err = b.ctl.stats(ctx, t.control); err != nil {
			return s, err
		}
	}
	if t.backendControl != "" {
		if s.backendStats, err = b.ctl.stats(ctx, t.backendControl); err != nil {
			return s, err
		}
	}
	if t.admin != "" {
		if s.metrics, err = b.scrape(ctx, t.admin); err != nil {
			return s, err
		}
	}
	return s, nil
}

// scrape reads roamgate's /metrics and sums the series the benchmark uses.
func (b *bench) scrape(ctx context.Context, admin string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.ctl.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape roamgate metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape roamgate metrics: status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape roamgate metrics: %w", err)
	}
	return sumMetrics(fams), nil
}

// sumMetrics sums the series the benchmark reads over their labels.
func sumMetrics(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, name := range []string{mUpstreamOpened, mSessionsOpened, mSessionsActive, mSessionMoves, mPathChanges, mRequests} {
		out[name] = 0
		fam := fams[name]
		if fam == nil {
			continue
		}
		for _, m := range fam.GetMetric() {
			if !keep(name, m) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				out[name] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name] += m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// keep selects the series of a family that count: h3 sessions, and
// requests that were not answered 2xx.
func keep(name string, m *dto.Metric) bool {
	for _, l := range m.GetLabel() {
		switch {
		case name == mSessionsOpened && l.GetName() == "proto":
			return l.GetValue() == "h3"
		case name == mRequests && l.GetName() == "class":
			return !strings.HasPrefix(l.GetValue(), "2")
		}
	}
	return true
}

// delta is after minus before of a roamgate series.
func delta(before, after sample, name string) int64 {
	return int64(after.metrics[name] - before.metrics[name])
}
