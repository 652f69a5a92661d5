package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/roamgate/roamgate/upstream"
)

// quicBufferWant is the UDP socket buffer size quic-go asks for (7 MiB),
// rounded up as its documentation suggests for the sysctl.
const quicBufferWant = 7500000

// bench is one benchmark run: its options, its targets and what it needs
// to measure them.
type bench struct {
	o        *options
	ticks    int64 // clock ticks per second of /proc/PID/stat
	ctl      *controlClient
	targets  []*target
	progress io.Writer

	// idleBaseline is each target's settled RSS before its first idle round.
	idleBaseline map[string]int64
	// profiled is set once roamgate's CPU profile has been taken.
	profiled bool
	// heapProfiled is set once roamgate's heap profile has been taken.
	heapProfiled bool
}

// run runs the benchmark the command line asks for and prints its tables
// to stdout (stderr with --json -), progress to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	if runtime.GOOS != "linux" {
		return fmt.Errorf("it reads each server's CPU time and memory from /proc, which %s does not have: run it on Linux", runtime.GOOS)
	}
	out := stdout
	if o.jsonPath == "-" {
		out = stderr
	}
	b := &bench{o: o, ticks: clockTicks(), ctl: newControlClient(), progress: stderr, idleBaseline: map[string]int64{}}
	defer b.ctl.close()
	rep := &report{
		Command:     commandLine(args),
		Started:     time.Now().UTC().Truncate(time.Second),
		Environment: describeMachine(b.ticks),
		Settings: settings{
			DurationSeconds: o.duration.Seconds(), WarmupSeconds: o.warmupFor().Seconds(), Rounds: o.rounds,
			Conns: o.conns, Streams: o.streams, SizeBytes: o.size, StreamBytes: o.streamSize,
			Idle: o.idle, Storm: o.storm, StormStreams: o.stormStreams, AccessLog: o.accessLog, Steering: o.steering, Targets: o.targetNames(),
			Faults: settingsOf(o.faults),
		},
	}
	printHeader(out, rep)

	var childEnv []string
	if e := rep.Environment; e.RmemMax < quicBufferWant || e.WmemMax < quicBufferWant {
		fmt.Fprintf(out, "UDP buffers are capped (rmem_max %d, wmem_max %d) below the 7 MiB quic-go asks for, which lowers HTTP/3 throughput; raise them: sudo sysctl -w net.core.rmem_max=%d net.core.wmem_max=%d\n",
			e.RmemMax, e.WmemMax, quicBufferWant, quicBufferWant)
		childEnv = append(childEnv, "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
		os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // the load generator's own sockets
	}
	if err := checkFileLimit(o); err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "roamgate-bench-*")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	var logsTo io.Writer
	if o.childLogs {
		logsTo = stderr
	}
	sp, err := newSpawner(childEnv, logsTo)
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			err = errors.Join(err, sp.stopAll())
		}
	}()
	fmt.Fprintln(b.progress, "starting the servers ...")
	if err := b.startTargets(ctx, sp, dir); err != nil {
		return err
	}

	for _, name := range o.scenarios {
		fmt.Fprintf(b.progress, "%s:\n", name)
		sr, err := b.runScenario(ctx, scenarioFor(name))
		if err != nil {
			return err
		}
		rep.Scenarios = append(rep.Scenarios, sr)
		printScenario(out, sr, o.rounds, rep.Environment.machine())
	}
	stopped = true
	if err := sp.stopAll(); err != nil {
		return err
	}

	rep.Failed = rep.failedChecks()
	if o.jsonPath != "" {
		if err := saveJSON(o.jsonPath, stdout, rep); err != nil {
			return err
		}
	}
	if len(rep.Failed) > 0 {
		return fmt.Errorf("%w: %s", errVerification, strings.Join(rep.Failed, "; "))
	}
	return nil
}

// startTargets starts the backend, roamgate in front of it (whose local CA
// issues the certificate both HTTP/3 servers use) and the plain HTTP/3
// server, and builds the targets to measure: the built-ins --targets names
// and the extra URLs.
func (b *bench) startTargets(ctx context.Context, sp *spawner, dir string) error {
	size := strconv.FormatInt(b.o.size, 10)
	backendArgs := []string{"--size", size}
	withUnix := slices.Contains(b.o.targets, tgRoamgateUnix)
	if withUnix {
		backendArgs = append(backendArgs, "--unix", filepath.Join(dir, "backend.sock"))
	}
	backend, err := sp.start(ctx, childBackend, backendArgs...)
	if err != nil {
		return err
	}
	startRoamgate := func(backendAddr string, extra ...string) (*child, error) {
		args := append([]string{"--backend", backendAddr, "--data-dir", filepath.Join(dir, "data")}, extra...)
		if b.o.accessLog {
			args = append(args, "--access-log")
		}
		if b.o.steering != "" {
			args = append(args, "--steering", b.o.steering)
		}
		return sp.start(ctx, childRoamgate, args...)
	}
	// roamgate's child removes the temporary directory when it exits: the
	// children exit when this process dies (their stdin closes), even when
	// it is killed outright and cannot remove it itself.
	rg, err := startRoamgate(backend.info.Addr, "--remove-on-exit", dir)
	if err != nil {
		return err
	}
	var rgUnix *child
	if withUnix {
		if rgUnix, err = startRoamgate(upstream.UnixPrefix + backend.info.Unix); err != nil {
			return err
		}
	}
	plain, err := sp.start(ctx, childPlain, "--size", size, "--cert", rg.info.CertFile, "--key", rg.info.KeyFile)
	if err != nil {
		return err
	}
	var rl *child
	if slices.Contains(b.o.targets, tgRelay) {
		rl, err = sp.start(ctx, childRelay, "--backend", backend.info.Addr, "--cert", rg.info.CertFile, "--key", rg.info.KeyFile)
		if err != nil {
			return err
		}
	}
	rootPEM, err := os.ReadFile(rg.info.RootFile)
	if err != nil {
		return fmt.Errorf("roamgate's local ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return fmt.Errorf("roamgate's local ca %s: no certificate", rg.info.RootFile)
	}
	clientTLS := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	// h3Target is an HTTP/3 child's target; roamgate's has an admin
	// endpoint, and the backend's figures behind it.
	h3Target := func(c *child) (*target, error) {
		_, port, err := net.SplitHostPort(c.info.Addr)
		if err != nil {
			return nil, fmt.Errorf("child address %q: %w", c.info.Addr, err)
		}
		t := &target{kind: kindH3, base: "https://localhost:" + port, addr: c.info.Addr, tls: clientTLS,
			pid: c.info.PID, control: c.info.Control, child: c, admin: c.info.Admin}
		if c.kind == childRoamgate || c.kind == childRelay {
			t.backendPID, t.backendControl = backend.info.PID, backend.info.Control
		}
		return t, nil
	}
	for _, name := range b.o.targets {
		var t *target
		switch name {
		case tgPlain:
			t, err = h3Target(plain)
		case tgRelay:
			t, err = h3Target(rl)
		case tgRoamgate:
			t, err = h3Target(rg)
		case tgRoamgateUnix:
			t, err = h3Target(rgUnix)
		case tgDirect:
			t = &target{kind: kindH1, base: "http://" + backend.info.Addr,
				pid: backend.info.PID, control: backend.info.Control, child: backend}
		}
		if err != nil {
			return err
		}
		t.name, t.builtin, t.getPath = name, true, "/"
		b.targets = append(b.targets, t)
	}
	for _, u := range b.o.extra {
		b.targets = append(b.targets, extraTarget(u, b.o))
	}
	for _, t := range b.targets {
		pid := "pid unknown: no CPU or RSS"
		if t.pid != 0 {
			pid = "pid " + strconv.Itoa(t.pid)
		}
		fmt.Fprintf(b.progress, "  %s: %s (%s)\n", t.name, t.base+t.getPath, pid)
	}
	return nil
}

// checkFileLimit makes sure the client sockets of the idle scenario and
// the storm fit the open file limit, raising the soft limit if it must.
func checkFileLimit(o *options) error {
	need := uint64(256)
	if o.has(scIdle) {
		need += uint64(o.idle)
	}
	if o.has(scStorm) {
		perClient := uint64(2) // each migration opens a second socket
		if o.faults != nil {
			perClient *= 2 // and the fault relay one for each
		}
		need = max(need, 256+perClient*uint64(o.storm))
	}
	if o.has(scThroughput) {
		need = max(need, uint64(256+o.conns*o.streams))
	}
	return ensureFileLimit(need)
}

// saveJSON writes the report to path, or to stdout for "-".
func saveJSON(path string, stdout io.Writer, rep *report) error {
	if path == "-" {
		return writeJSON(stdout, rep)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	if err := writeJSON(f, rep); err != nil {
		f.Close()
		return fmt.Errorf("write json %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write json %s: %w", path, err)
	}
	return nil
}

// describeMachine reports the Go, OS, kernel and CPU the benchmark runs on.
func describeMachine(ticks int64) environment {
	e := environment{
		Go:         runtime.Version(),
		OS:         runtime.GOOS + "/" + runtime.GOARCH,
		Kernel:     "unknown",
		CPU:        "unknown CPU",
		CPUs:       runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		ClockTicks: ticks,
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if name, value, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
				e.CPU = strings.TrimSpace(value)
				break
			}
		}
		f.Close()
	}
	e.RmemMax, e.WmemMax = udpBufferMax()
	return e
}

// commandLine renders the command line as a shell would take it back.
func commandLine(args []string) string {
	parts := []string{"roamgate-bench"}
	for _, a := range args {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
		}) {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
