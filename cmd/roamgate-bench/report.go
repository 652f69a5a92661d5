package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything one benchmark run measured; --json writes it.
type report struct {
	Command     string            `json:"command"`
	Started     time.Time         `json:"started"`
	Environment environment       `json:"environment"`
	Settings    settings          `json:"settings"`
	Scenarios   []*scenarioReport `json:"scenarios"`
	Failed      []string          `json:"failed_checks,omitempty"`
}

// environment describes the machine.
type environment struct {
	Go         string `json:"go"`
	OS         string `json:"os"`
	Kernel     string `json:"kernel"`
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	RmemMax    int64  `json:"net_core_rmem_max"`
	WmemMax    int64  `json:"net_core_wmem_max"`
	ClockTicks int64  `json:"clock_ticks"`
}

// settings are the options that shaped the figures.
type settings struct {
	DurationSeconds float64  `json:"duration_seconds"`
	WarmupSeconds   float64  `json:"warmup_seconds"`
	Rounds          int      `json:"rounds"`
	Conns           int      `json:"conns"`
	Streams         int      `json:"streams"`
	SizeBytes       int64    `json:"size_bytes"`
	StreamBytes     int64    `json:"stream_size_bytes"`
	Idle            int      `json:"idle"`
	Storm           int      `json:"storm"`
	StormStreams    int      `json:"storm_streams"`
	AccessLog       bool     `json:"access_log"`
	Steering        string   `json:"steering,omitempty"`
	Targets         []string `json:"targets"`
	// Faults are those of the storm's path (--faults); absent: none.
	Faults *faultSettings `json:"storm_faults,omitempty"`
}

// scenarioReport is one scenario's results, per target.
type scenarioReport struct {
	Name    string          `json:"name"`
	Title   string          `json:"title"`
	Targets []*targetReport `json:"targets"`
}

// targetReport is one target's results in one scenario: every round, and
// their summary.
type targetReport struct {
	Target  string    `json:"target"`
	Rounds  []figures `json:"rounds"`
	Summary figures   `json:"summary"`
	Checks  []check   `json:"checks,omitempty"`
}

// check is one verification of a target's results.
type check struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	Got  string `json:"got"`
}

// figures is what one run (or, summarized, all rounds) of one target in
// one scenario measured. Latencies are in microseconds. CPU is per request,
// or per MB in the transfer scenarios. Pointers are absent when unknown.
type figures struct {
	Round             int      `json:"round,omitempty"`
	Failed            string   `json:"failed,omitempty"`
	Conns             int      `json:"conns"`
	Requests          int64    `json:"requests"`
	Seconds           float64  `json:"seconds"`
	ReqPerSec         float64  `json:"req_per_sec"`
	P50US             float64  `json:"p50_us"`
	P99US             float64  `json:"p99_us"`
	MaxUS             float64  `json:"max_us"`
	Errors            int64    `json:"errors"`
	ErrorSamples      []string `json:"error_samples,omitempty"`
	Handshakes        int64    `json:"handshakes"`
	ServerConns       *int64   `json:"server_conns_opened,omitempty"`
	CPUUS             *float64 `json:"server_cpu_us,omitempty"`
	BackendCPUUS      *float64 `json:"backend_cpu_us,omitempty"`
	RSS               *int64   `json:"server_rss_bytes,omitempty"`
	PeakRSS           *int64   `json:"server_peak_rss_bytes,omitempty"`
	PeakGrowth        *int64   `json:"server_peak_growth_bytes,omitempty"` // peak RSS of the run minus RSS when it started
	UpstreamOpened    *int64   `json:"upstream_conns_opened,omitempty"`
	ServerErrors      *int64   `json:"server_non_2xx,omitempty"`
	Bytes             int64    `json:"bytes,omitempty"`
	MBPerSec          float64  `json:"mb_per_sec,omitempty"`
	Migrations        int64    `json:"migrations,omitempty"`
	MigrationFailures int64    `json:"migration_failures,omitempty"`
	MigrateP50US      float64  `json:"migrate_p50_us,omitempty"`
	MigrateMaxUS      float64  `json:"migrate_max_us,omitempty"`
	SessionMoves      *int64   `json:"session_moves,omitempty"`
	// The storm, as the backend saw it (roamgate targets): upstream
	// connections per client, the most of one client, clients whose
	// requests after their migration came over a connection not in their
	// set before, connections that carried more than one client.
	Streams              int          `json:"streams,omitempty"`
	TrackedClients       *int64       `json:"tracked_clients,omitempty"`
	UpstreamPerClient    *float64     `json:"upstream_conns_per_client,omitempty"`
	UpstreamMaxPerClient *int64       `json:"upstream_conns_max_per_client,omitempty"`
	SetsChanged          *int64       `json:"clients_whose_set_changed,omitempty"`
	SetsGrew             *int64       `json:"clients_whose_set_grew,omitempty"`
	UpstreamOpenedAll    *int64       `json:"upstream_conns_opened_with_warmup,omitempty"`
	SharedUpstream       *int64       `json:"upstream_conns_shared,omitempty"`
	PathChanges          *int64       `json:"path_changes,omitempty"`
	Idle                 *idleFigures `json:"idle,omitempty"`

	// The faulted storm (--faults): packets the relay passed on and
	// dropped (both ways, from the first handshake to the end of the
	// measured run), and the hash checks of the bodies (warm-up
	// included): whole and their own, with bytes not their own, cut short.
	RelayForwarded   *int64 `json:"relay_packets_forwarded,omitempty"`
	RelayDropped     *int64 `json:"relay_packets_dropped,omitempty"`
	BodiesVerified   *int64 `json:"bodies_verified,omitempty"`
	BodiesMismatched *int64 `json:"bodies_mismatched,omitempty"`
	BodiesTruncated  *int64 `json:"bodies_truncated,omitempty"`
}

// idleFigures is what the idle scenario measured of a server's memory.
type idleFigures struct {
	Conns              int     `json:"conns"`
	OpenSeconds        float64 `json:"open_seconds"`
	Baseline           int64   `json:"rss_baseline_bytes"` // before the first round
	RSSBefore          int64   `json:"rss_before_bytes"`
	RSSHeld            int64   `json:"rss_held_bytes"`
	RSSAfterClose      int64   `json:"rss_after_close_bytes"`
	PerConnBytes       float64 `json:"rss_per_conn_bytes"`
	HeapPerConnBytes   float64 `json:"heap_per_conn_bytes"`
	GoroutinesPerConn  float64 `json:"goroutines_per_conn"`
	UpstreamHeld       *int64  `json:"upstream_conns_held,omitempty"`
	UpstreamAfterClose *int64  `json:"upstream_conns_after_close,omitempty"`
	// Summary only: a leak shows as growth from round to round.
	HeldByRound   []int64 `json:"rss_held_by_round,omitempty"`
	ClosedByRound []int64 `json:"rss_after_close_by_round,omitempty"`
}

// summarize combines the rounds of one target: medians, except errors,
// handshakes, migrations and connection counts (totals) and the maximum
// latency (the largest). Failed rounds are left out and noted.
func summarize(rounds []figures) figures {
	var ok []figures
	var failed []string
	for _, r := range rounds {
		if r.Failed != "" {
			failed = append(failed, r.Failed)
			continue
		}
		ok = append(ok, r)
	}
	var s figures
	if len(failed) > 0 {
		s.Failed = fmt.Sprintf("%d of %d rounds failed: %s", len(failed), len(rounds), failed[0])
	}
	if len(ok) == 0 {
		return s
	}
	s.Conns = ok[0].Conns
	s.Bytes = ok[0].Bytes
	s.Requests = sumOf(ok, func(f figures) int64 { return f.Requests })
	s.Seconds = sumOf(ok, func(f figures) float64 { return f.Seconds })
	s.ReqPerSec = medianOf(ok, func(f figures) float64 { return f.ReqPerSec })
	s.P50US = medianOf(ok, func(f figures) float64 { return f.P50US })
	s.P99US = medianOf(ok, func(f figures) float64 { return f.P99US })
	s.MaxUS = maxOf(ok, func(f figures) float64 { return f.MaxUS })
	s.Errors = sumOf(ok, func(f figures) int64 { return f.Errors })
	s.Handshakes = sumOf(ok, func(f figures) int64 { return f.Handshakes })
	for _, r := range ok {
		for _, e := range r.ErrorSamples {
			if len(s.ErrorSamples) < maxErrorSamples && !slices.Contains(s.ErrorSamples, e) {
				s.ErrorSamples = append(s.ErrorSamples, e)
			}
		}
	}
	s.ServerConns = sumPtr(ok, func(f figures) *int64 { return f.ServerConns })
	s.CPUUS = medianPtr(ok, func(f figures) *float64 { return f.CPUUS })
	s.BackendCPUUS = medianPtr(ok, func(f figures) *float64 { return f.BackendCPUUS })
	s.RSS = intPtr(medianPtr(ok, func(f figures) *float64 { return floatPtr(f.RSS) }))
	s.PeakRSS = intPtr(maxPtr(ok, func(f figures) *float64 { return floatPtr(f.PeakRSS) }))
	s.PeakGrowth = intPtr(maxPtr(ok, func(f figures) *float64 { return floatPtr(f.PeakGrowth) }))
	s.UpstreamOpened = sumPtr(ok, func(f figures) *int64 { return f.UpstreamOpened })
	s.ServerErrors = sumPtr(ok, func(f figures) *int64 { return f.ServerErrors })
	s.MBPerSec = medianOf(ok, func(f figures) float64 { return f.MBPerSec })
	s.Migrations = sumOf(ok, func(f figures) int64 { return f.Migrations })
	s.MigrationFailures = sumOf(ok, func(f figures) int64 { return f.MigrationFailures })
	s.MigrateP50US = medianOf(ok, func(f figures) float64 { return f.MigrateP50US })
	s.MigrateMaxUS = maxOf(ok, func(f figures) float64 { return f.MigrateMaxUS })
	s.SessionMoves = sumPtr(ok, func(f figures) *int64 { return f.SessionMoves })
	s.Streams = ok[0].Streams
	s.TrackedClients = sumPtr(ok, func(f figures) *int64 { return f.TrackedClients })
	s.UpstreamPerClient = maxPtr(ok, func(f figures) *float64 { return f.UpstreamPerClient })
	s.UpstreamMaxPerClient = intPtr(maxPtr(ok, func(f figures) *float64 { return floatPtr(f.UpstreamMaxPerClient) }))
	s.SetsChanged = sumPtr(ok, func(f figures) *int64 { return f.SetsChanged })
	s.SetsGrew = sumPtr(ok, func(f figures) *int64 { return f.SetsGrew })
	s.UpstreamOpenedAll = sumPtr(ok, func(f figures) *int64 { return f.UpstreamOpenedAll })
	s.SharedUpstream = sumPtr(ok, func(f figures) *int64 { return f.SharedUpstream })
	s.PathChanges = sumPtr(ok, func(f figures) *int64 { return f.PathChanges })
	s.RelayForwarded = sumPtr(ok, func(f figures) *int64 { return f.RelayForwarded })
	s.RelayDropped = sumPtr(ok, func(f figures) *int64 { return f.RelayDropped })
	s.BodiesVerified = sumPtr(ok, func(f figures) *int64 { return f.BodiesVerified })
	s.BodiesMismatched = sumPtr(ok, func(f figures) *int64 { return f.BodiesMismatched })
	s.BodiesTruncated = sumPtr(ok, func(f figures) *int64 { return f.BodiesTruncated })
	if ok[0].Idle != nil {
		s.Idle = summarizeIdle(ok)
	}
	return s
}

// summarizeIdle takes the medians of the idle figures, and keeps each
// round's baseline so growth across rounds shows.
func summarizeIdle(ok []figures) *idleFigures {
	var ids []idleFigures
	for _, f := range ok {
		if f.Idle != nil {
			ids = append(ids, *f.Idle)
		}
	}
	med := func(field func(idleFigures) float64) float64 { return medianOf(ids, field) }
	s := &idleFigures{
		Conns:              ids[0].Conns,
		Baseline:           ids[0].Baseline,
		OpenSeconds:        med(func(i idleFigures) float64 { return i.OpenSeconds }),
		RSSBefore:          int64(med(func(i idleFigures) float64 { return float64(i.RSSBefore) })),
		RSSHeld:            int64(med(func(i idleFigures) float64 { return float64(i.RSSHeld) })),
		RSSAfterClose:      int64(med(func(i idleFigures) float64 { return float64(i.RSSAfterClose) })),
		PerConnBytes:       med(func(i idleFigures) float64 { return i.PerConnBytes }),
		HeapPerConnBytes:   med(func(i idleFigures) float64 { return i.HeapPerConnBytes }),
		GoroutinesPerConn:  med(func(i idleFigures) float64 { return i.GoroutinesPerConn }),
		UpstreamHeld:       intPtr(medianPtr(ids, func(i idleFigures) *float64 { return floatPtr(i.UpstreamHeld) })),
		UpstreamAfterClose: intPtr(maxPtr(ids, func(i idleFigures) *float64 { return floatPtr(i.UpstreamAfterClose) })),
	}
	for _, i := range ids {
		s.HeldByRound = append(s.HeldByRound, i.RSSHeld)
		s.ClosedByRound = append(s.ClosedByRound, i.RSSAfterClose)
	}
	return s
}

func floatPtr(p *int64) *float64 {
	if p == nil {
		return nil
	}
	return ptr(float64(*p))
}

func intPtr(p *float64) *int64 {
	if p == nil {
		return nil
	}
	return ptr(int64(math.Round(*p)))
}

// medianPtr is the median of the present values, nil when none is.
func medianPtr[T any](rs []T, field func(T) *float64) *float64 {
	return presentOnly(rs, field, medianOf[T])
}

// maxPtr is the largest of the present values, nil when none is.
func maxPtr[T any](rs []T, field func(T) *float64) *float64 {
	return presentOnly(rs, field, maxOf[T])
}

// presentOnly applies agg (which skips NaN) to the values field presents,
// nil when none is.
func presentOnly[T any](rs []T, field func(T) *float64, agg func([]T, func(T) float64) float64) *float64 {
	v := agg(rs, func(r T) float64 {
		if p := field(r); p != nil {
			return *p
		}
		return math.NaN()
	})
	if math.IsNaN(v) {
		return nil
	}
	return &v
}

// sumPtr is the sum of the present values, nil when none is.
func sumPtr[T any](rs []T, field func(T) *int64) *int64 {
	var s *int64
	for _, r := range rs {
		if p := field(r); p != nil {
			if s == nil {
				s = new(int64)
			}
			*s += *p
		}
	}
	return s
}

// checks verifies a built-in target's results: no errors, one handshake per
// connection (nothing re-dialled, on either side's count), and in the storm
// every client migrated, with no session moved and no session's upstream
// set larger than its client's requests in flight, and under faults every
// body whole and its own. Extra targets are measured, not verified.
func (b *bench) checks(scenarioName string, t *target, tr *targetReport) []check {
	if !t.builtin {
		return nil
	}
	s := tr.Summary
	var cs []check
	add := func(name string, ok bool, format string, a ...any) {
		cs = append(cs, check{Name: name, OK: ok, Got: fmt.Sprintf(format, a...)})
	}
	okRounds := 0
	for _, r := range tr.Rounds {
		if r.Failed == "" {
			okRounds++
		}
	}
	add("every round ran", okRounds == len(tr.Rounds), "%d of %d", okRounds, len(tr.Rounds))
	if okRounds == 0 {
		return cs
	}
	add("no errors", s.Errors == 0, "%d", s.Errors)
	conns := int64(s.Conns) * int64(okRounds)
	add("no re-dial", s.Handshakes == conns, "%d handshakes for %d connections", s.Handshakes, conns)
	if s.ServerConns != nil {
		add("server saw the same connections", *s.ServerConns == s.Handshakes, "%d opened", *s.ServerConns)
	}
	if s.ServerErrors != nil {
		add("roamgate answered every request 2xx", *s.ServerErrors == 0, "%d others", *s.ServerErrors)
	}
	if scenarioName == scStorm {
		add("every client migrated", s.Migrations == conns && s.MigrationFailures == 0, "%d of %d, %d failed", s.Migrations, conns, s.MigrationFailures)
		if s.SessionMoves != nil {
			add("no session moved", *s.SessionMoves == 0, "%d", *s.SessionMoves)
		}
		if s.UpstreamOpened != nil && s.Streams <= 1 {
			// One request in flight: the warm-up dialled each
			// session's only connection.
			add("sessions kept their upstream connections", *s.UpstreamOpened == 0, "%d opened", *s.UpstreamOpened)
		}
		if s.UpstreamOpenedAll != nil {
			bound := conns * int64(max(s.Streams, 1))
			add("sessions never outgrew their clients", *s.UpstreamOpenedAll <= bound,
				"%d opened in all for %d clients × %d in flight", *s.UpstreamOpenedAll, conns, max(s.Streams, 1))
		}
		if s.PathChanges != nil {
			add("roamgate saw every migration", *s.PathChanges == s.Migrations, "%d path changes", *s.PathChanges)
		}
		if s.BodiesVerified != nil {
			add("every body was its request's, whole", *s.BodiesMismatched == 0 && *s.BodiesTruncated == 0 && *s.BodiesVerified > 0,
				"%d verified, %d not their own, %d cut short", *s.BodiesVerified, *s.BodiesMismatched, *s.BodiesTruncated)
		}
		if s.UpstreamMaxPerClient != nil {
			add("every client reached the backend", *s.TrackedClients == conns, "%d of %d", *s.TrackedClients, conns)
			add("backend saw at most --storm-streams connections per client", *s.UpstreamMaxPerClient <= int64(s.Streams),
				"%.2f per client, at most %d, for %d in flight", *s.UpstreamPerClient, *s.UpstreamMaxPerClient, s.Streams)
			add("every client kept its set across its migration", *s.SetsChanged == 0, "%d changed", *s.SetsChanged)
			add("no upstream connection carried two clients", *s.SharedUpstream == 0, "%d shared", *s.SharedUpstream)
		}
	}
	if scenarioName == scIdle && s.Idle != nil && s.Idle.UpstreamAfterClose != nil {
		add("upstream connections closed with their sessions", *s.Idle.UpstreamAfterClose == 0, "%d left", *s.Idle.UpstreamAfterClose)
	}
	return cs
}

// printHeader writes the command line and the machine.
func printHeader(w io.Writer, r *report) {
	e := r.Environment
	fmt.Fprintf(w, "$ %s\n", r.Command)
	fmt.Fprintf(w, "%s %s, kernel %s, %s, %d CPUs (GOMAXPROCS %d), %s\n", e.Go, e.OS, e.Kernel, e.CPU, e.CPUs, e.GOMAXPROCS, r.Started.Format(time.RFC3339))
	s := r.Settings
	fmt.Fprintf(w, "targets: %s; %d rounds, %v measured after %v warm-up per load run; medians over rounds (errors, handshakes: totals; max: largest)\n",
		strings.Join(s.Targets, ", "), s.Rounds, time.Duration(s.DurationSeconds*float64(time.Second)), time.Duration(s.WarmupSeconds*float64(time.Second)))
	fmt.Fprintf(w, "Each server is a process of its own; CPU (in 1/%d s ticks) and RSS are that process's, from /proc. The load generator shares the machine.\n", e.ClockTicks)
	accessLog := "off (--access-log encodes it)"
	if s.AccessLog {
		accessLog = "encoded as JSON and discarded"
	}
	steering := "plain UDP sockets (--steering bpf|forward: its upgrade steering)"
	if s.Steering != "" {
		steering = "UDP through its upgrade steering, " + s.Steering + " mode"
	}
	fmt.Fprintf(w, "roamgate: access log %s; %s; h3-plain: quic-go alone with roamgate's QUIC settings and certificate; both serve on loopback.\n", accessLog, steering)
	if f := s.Faults; f != nil {
		fmt.Fprintf(w, "faults: the storm's clients reach each HTTP/3 target through a relay (impair) with %s; every body is checked by hash; timeouts at least %v.\n", f, faultTimeout)
	}
}

// machine names the machine for a table's title: "AMD EPYC, 2 CPUs".
func (e environment) machine() string {
	return fmt.Sprintf("%s, %d CPUs", e.CPU, e.CPUs)
}

// printScenario writes one scenario's table, its checks and its error
// samples; machine goes in its title, so a table quoted alone says where
// its figures come from.
func printScenario(w io.Writer, rep *scenarioReport, rounds int, machine string) {
	fmt.Fprintf(w, "\n== %s: %s, %d rounds, on %s ==\n", rep.Name, rep.Title, rounds, machine)
	if len(rep.Targets) == 0 {
		fmt.Fprintln(w, "(no target applies)")
		return
	}
	var plain *figures
	for _, tr := range rep.Targets {
		if tr.Target == tgPlain && tr.Summary.Failed == "" {
			plain = &tr.Summary
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	switch rep.Name {
	case scDownload, scUpload:
		printTransferTable(tw, rep, plain)
	case scIdle:
		printIdleTable(tw, rep, plain)
	default:
		printLoadTable(tw, rep, plain)
	}
	tw.Flush()
	if rep.Name == scStorm {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "target\tmigrations\tfailed\tmigrate p50\tmigrate max\tsession moves\tpath changes seen\tupstream conns opened\tbackend conns per client (max)\tsets changed (grew)\tshared")
		for _, tr := range rep.Targets {
			s := tr.Summary
			perClient := "-"
			if s.UpstreamPerClient != nil {
				perClient = fmt.Sprintf("%.2f (%d)", *s.UpstreamPerClient, *s.UpstreamMaxPerClient)
			}
			changed := fmtInt(s.SetsChanged)
			if s.SetsGrew != nil {
				changed = fmt.Sprintf("%d (%d)", *s.SetsChanged, *s.SetsGrew)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", tr.Target, s.Migrations, s.MigrationFailures, fmtUS(s.MigrateP50US), fmtUS(s.MigrateMaxUS),
				fmtInt(s.SessionMoves), fmtInt(s.PathChanges), fmtInt(s.UpstreamOpened), perClient, changed, fmtInt(s.SharedUpstream))
		}
		tw.Flush()
		if faulted(rep) {
			printFaultTable(w, rep)
		}
	}
	if rep.Name == scIdle {
		for _, tr := range rep.Targets {
			if id := tr.Summary.Idle; id != nil && len(id.HeldByRound) > 1 {
				n := len(id.ClosedByRound)
				fmt.Fprintf(w, "%s by round: RSS held %s; after close %s (%s from round 1 to %d; a leak would grow it)\n",
					tr.Target, mibList(id.HeldByRound), mibList(id.ClosedByRound), fmtSignedMiB(id.ClosedByRound[n-1]-id.ClosedByRound[0]), n)
			}
		}
	}
	printChecks(w, rep)
}

func printLoadTable(tw io.Writer, rep *scenarioReport, plain *figures) {
	fmt.Fprintln(tw, "target\treq/s\tp50\tp99\tmax\terrors\thandshakes\tserver CPU µs/req\tbackend CPU µs/req\tserver RSS\tupstream conns opened\treq/s ÷ plain\tCPU ÷ plain\tp50 − plain")
	for _, tr := range rep.Targets {
		s := tr.Summary
		if s.Failed != "" && s.Requests == 0 {
			fmt.Fprintf(tw, "%s\tfailed: %s\n", tr.Target, s.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			tr.Target, s.ReqPerSec, fmtUS(s.P50US), fmtUS(s.P99US), fmtUS(s.MaxUS), s.Errors, s.Handshakes,
			fmtFloat(s.CPUUS, 1), fmtFloat(s.BackendCPUUS, 1), fmtMiBPtr(s.RSS), fmtInt(s.UpstreamOpened),
			ratio(s.ReqPerSec, plainField(plain, func(f *figures) float64 { return f.ReqPerSec })),
			ratioPtr(s.CPUUS, plainPtr(plain, func(f *figures) *float64 { return f.CPUUS })),
			diffUS(s.P50US, plainField(plain, func(f *figures) float64 { return f.P50US })))
	}
}

func printTransferTable(tw io.Writer, rep *scenarioReport, plain *figures) {
	fmt.Fprintln(tw, "target\tMB/s\ttime\terrors\thandshakes\tserver CPU µs/MB\tbackend CPU µs/MB\tserver RSS\tpeak RSS\tpeak growth\tupstream conns opened\tMB/s ÷ plain\tCPU ÷ plain")
	for _, tr := range rep.Targets {
		s := tr.Summary
		if s.Failed != "" && s.Requests == 0 {
			fmt.Fprintf(tw, "%s\tfailed: %s\n", tr.Target, s.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			tr.Target, s.MBPerSec, fmtUS(s.P50US), s.Errors, s.Handshakes,
			fmtFloat(s.CPUUS, 0), fmtFloat(s.BackendCPUUS, 0), fmtMiBPtr(s.RSS), fmtMiBPtr(s.PeakRSS), fmtMiBPtr(s.PeakGrowth), fmtInt(s.UpstreamOpened),
			ratio(s.MBPerSec, plainField(plain, func(f *figures) float64 { return f.MBPerSec })),
			ratioPtr(s.CPUUS, plainPtr(plain, func(f *figures) *float64 { return f.CPUUS })))
	}
}

func printIdleTable(tw io.Writer, rep *scenarioReport, plain *figures) {
	fmt.Fprintln(tw, "target\tconns\topened in\tRSS before\tRSS held\tRSS per conn\theap per conn\tgoroutines per conn\tRSS after close\tupstream conns held\terrors\thandshakes\tper conn ÷ plain")
	var plainPer float64 = math.NaN()
	if plain != nil && plain.Idle != nil {
		plainPer = plain.Idle.PerConnBytes
	}
	for _, tr := range rep.Targets {
		s := tr.Summary
		id := s.Idle
		if id == nil {
			fmt.Fprintf(tw, "%s\tfailed: %s\n", tr.Target, s.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.1fs\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%d\t%d\t%s\n",
			tr.Target, id.Conns, id.OpenSeconds, fmtMiB(id.Baseline), fmtMiB(id.RSSHeld), fmtKiB(id.PerConnBytes), fmtKiB(id.HeapPerConnBytes),
			id.GoroutinesPerConn, fmtMiB(id.RSSAfterClose), fmtInt(id.UpstreamHeld), s.Errors, s.Handshakes, ratio(id.PerConnBytes, plainPer))
	}
}

// faulted reports whether the scenario ran under --faults.
func faulted(rep *scenarioReport) bool {
	return slices.ContainsFunc(rep.Targets, func(tr *targetReport) bool { return tr.Summary.RelayForwarded != nil })
}

// printFaultTable writes what the fault relay did and what the hash checks
// found.
func printFaultTable(w io.Writer, rep *scenarioReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\trelay packets forwarded\tdropped\tbodies verified\tnot their own\tcut short")
	for _, tr := range rep.Targets {
		s := tr.Summary
		dropped := fmtInt(s.RelayDropped)
		if s.RelayDropped != nil && s.RelayForwarded != nil && *s.RelayDropped+*s.RelayForwarded > 0 {
			dropped = fmt.Sprintf("%d (%.1f %%)", *s.RelayDropped, 100*float64(*s.RelayDropped)/float64(*s.RelayDropped+*s.RelayForwarded))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", tr.Target, fmtInt(s.RelayForwarded), dropped,
			fmtInt(s.BodiesVerified), fmtInt(s.BodiesMismatched), fmtInt(s.BodiesTruncated))
	}
	tw.Flush()
}

// printChecks writes the failed checks in full and counts the rest.
func printChecks(w io.Writer, rep *scenarioReport) {
	passed, total := 0, 0
	for _, tr := range rep.Targets {
		for _, c := range tr.Checks {
			total++
			if c.OK {
				passed++
				continue
			}
			fmt.Fprintf(w, "FAILED %s: %s (got %s)\n", tr.Target, c.Name, c.Got)
		}
		s := tr.Summary
		if s.Failed != "" {
			fmt.Fprintf(w, "%s: %s\n", tr.Target, s.Failed)
		}
		if len(s.ErrorSamples) > 0 {
			fmt.Fprintf(w, "%s errors, first: %s\n", tr.Target, strings.Join(s.ErrorSamples, "; "))
		}
	}
	if total > 0 {
		fmt.Fprintf(w, "checks: %d of %d passed (no errors, one handshake per connection on both sides", passed, total)
		switch rep.Name {
		case scStorm:
			fmt.Fprint(w, ", every client migrated, no session moved, no session's upstream set past its requests in flight")
			if faulted(rep) {
				fmt.Fprint(w, ", every body whole and its own")
			}
		case scIdle:
			fmt.Fprint(w, ", upstream connections closed with their sessions")
		}
		fmt.Fprintln(w, ")")
	}
}

// failedChecks lists every failed check of the report.
func (r *report) failedChecks() []string {
	var out []string
	for _, sc := range r.Scenarios {
		for _, tr := range sc.Targets {
			for _, c := range tr.Checks {
				if !c.OK {
					out = append(out, fmt.Sprintf("%s %s: %s (got %s)", sc.Name, tr.Target, c.Name, c.Got))
				}
			}
		}
	}
	return out
}

// writeJSON writes the report, indented.
func writeJSON(w io.Writer, r *report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func plainField(plain *figures, f func(*figures) float64) float64 {
	if plain == nil {
		return math.NaN()
	}
	return f(plain)
}

func plainPtr(plain *figures, f func(*figures) *float64) *float64 {
	if plain == nil {
		return nil
	}
	return f(plain)
}

// fmtUS writes a latency given in microseconds in a readable unit.
func fmtUS(v float64) string {
	switch {
	case math.IsNaN(v) || v == 0:
		return "-"
	case v < 1000:
		return fmt.Sprintf("%.0fµs", v)
	case v < 1e6:
		return fmt.Sprintf("%.2fms", v/1e3)
	}
	return fmt.Sprintf("%.2fs", v/1e6)
}

// diffUS writes v − base, signed, in a readable unit.
func diffUS(v, base float64) string {
	if math.IsNaN(base) || base == 0 || v == 0 {
		return "-"
	}
	d := v - base
	sign := "+"
	if d < 0 {
		sign, d = "−", -d
	}
	if d < 1 {
		return "±0µs"
	}
	return sign + fmtUS(d)
}

func ratio(v, base float64) string {
	if math.IsNaN(v) || math.IsNaN(base) || base == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v/base)
}

func ratioPtr(v, base *float64) string {
	if v == nil || base == nil {
		return "-"
	}
	return ratio(*v, *base)
}

func fmtFloat(p *float64, prec int) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, *p)
}

func fmtInt(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprint(*p)
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func fmtSignedMiB(b int64) string {
	if b < 0 {
		return "−" + fmtMiB(-b)
	}
	return "+" + fmtMiB(b)
}

func fmtMiBPtr(p *int64) string {
	if p == nil {
		return "-"
	}
	return fmtMiB(*p)
}

// mibList writes sizes as "1.0 → 2.0 → 3.0 MiB".
func mibList(bs []int64) string {
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = fmt.Sprintf("%.1f", float64(b)/(1<<20))
	}
	return strings.Join(parts, " → ") + " MiB"
}

func fmtKiB(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }
