// Command roamgate-bench measures roamgate on this machine, beside the
// baselines it must be judged against, in one run on loopback:
//
//   - h3-plain: a plain quic-go HTTP/3 server answering like the backend
//     (what the HTTP/3 stack costs without the proxy hop);
//   - roamgate: the proxy in front of an HTTP/1.1 backend;
//   - h1-direct: that backend straight over HTTP/1.1 with keep-alive;
//   - any HTTP/3 URL given on the command line (another proxy, say).
//
// Each server runs in a process of its own (the tool re-executes itself),
// so the CPU time and memory reported are each server's own; the load
// generator runs in this process and opens one QUIC connection per client,
// each on its own UDP socket, counting every handshake. Targets alternate
// round by round and the tables show medians over the rounds.
//
//	roamgate-bench [flags] [EXTRA_H3_URL...]
//
// See -h for the flags and the scenarios.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

// childArg, as the first argument, makes the binary one of the servers the
// benchmark measures instead of the benchmark itself; childEnv does the same
// for a test binary (see TestMain).
const (
	childArg = "__roamgate-bench-child"
	childEnv = "ROAMGATE_BENCH_CHILD"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == childArg {
		err = childMain(ctx, os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
	} else {
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode maps run's error to the process's exit status, printing it: 0
// for none or -h, 2 for a command-line mistake (the usage was printed), 3
// when the benchmark ran but a verification failed, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errVerification):
		fmt.Fprintln(stderr, "roamgate-bench:", err)
		return 3
	default:
		fmt.Fprintln(stderr, "roamgate-bench:", err)
		return 1
	}
}

var (
	// errUsage marks a command-line mistake; the message was printed.
	errUsage = errors.New("usage")
	// errVerification means the benchmark ran to the end but a check failed
	// (errors, re-dials, a failed migration, a session that moved).
	errVerification = errors.New("verification failed")
)

// Scenario names, in the order they run.
const (
	scLatency    = "latency"
	scThroughput = "throughput"
	scDownload   = "download"
	scUpload     = "upload"
	scStorm      = "storm"
	scIdle       = "idle"
)

// allScenarios is the run order: the idle scenario measures memory early,
// before the transfers leave the servers holding larger heaps.
var allScenarios = []string{scLatency, scThroughput, scIdle, scStorm, scDownload, scUpload}

// Built-in target names.
const (
	tgPlain        = "h3-plain"
	tgRelay        = "h3-relay"
	tgRoamgate     = "roamgate"
	tgRoamgateUnix = "roamgate-unix"
	tgDirect       = "h1-direct"
)

// builtinTargets are every built-in target, in table order;
// defaultTargets those measured unless --targets says otherwise.
var (
	builtinTargets = []string{tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix, tgDirect}
	defaultTargets = []string{tgPlain, tgRelay, tgRoamgate, tgDirect}
)

// options are the command line, parsed and checked.
type options struct {
	args         []string // as given, for the report
	duration     time.Duration
	warmup       time.Duration // 0: auto
	rounds       int
	scenarios    []string // in allScenarios order
	targets      []string // built-ins, in builtinTargets order
	conns        int
	streams      int
	size         int64
	streamSize   int64
	idle         int
	storm        int
	stormStreams int
	timeout      time.Duration
	jsonPath     string
	insecure     bool
	pids         map[string]int // extra URL → server PID
	extra        []*url.URL
	accessLog    bool
	steering     string // roamgate's upgrade steering: "" (none: plain sockets), bpf or forward
	childLogs    bool
	cpuProfile   string
	heapProfile  string
	profileOf    string // the scenario --cpuprofile and --heapprofile profile
	// faults impair the storm's path (--faults); nil: none.
	faults *impair.Faults
}

// warmupFor is the warm-up before each measured load run: --warmup, or a
// fifth of --duration, at most a second.
func (o *options) warmupFor() time.Duration {
	if o.warmup > 0 {
		return o.warmup
	}
	return min(o.duration/5, time.Second)
}

func (o *options) has(scenario string) bool { return slices.Contains(o.scenarios, scenario) }

// targetNames lists the targets in the order they are measured: the
// built-ins, then the extra URLs.
func (o *options) targetNames() []string {
	names := slices.Clone(o.targets)
	for _, u := range o.extra {
		names = append(names, u.String())
	}
	return names
}

const usageHead = `roamgate-bench: measure roamgate beside a plain HTTP/3 server and its backend, on loopback

Usage:
  roamgate-bench [flags] [EXTRA_H3_URL...]

Targets (each server in its own process, so CPU and memory are its own):
  h3-plain    a plain quic-go HTTP/3 server answering like the backend (the stack's limit)
  h3-relay    the least a proxy on this stack can do: quic-go relaying each request to the
              backend over its QUIC connection's own kept-alive TCP connection, parsing
              nothing but the status, Content-Type and Content-Length (the hop's own cost)
  roamgate    roamgate (local CA, HTTP/3) in front of an HTTP/1.1 backend
  h1-direct   the backend straight over HTTP/1.1, keep-alive
  roamgate-unix  roamgate in front of the same backend on a Unix socket, as a sidecar
              can be (not measured unless --targets names it)
  EXTRA_H3_URL  any HTTP/3 URL, e.g. https://localhost:8443/ (latency and throughput only;
              CPU and RSS with --pid URL=PID; --insecure skips certificate checks)

Scenarios (--scenarios, comma-separated, in this order):
  latency     1 connection × 1 stream, GET of --size bytes
  throughput  --conns connections × --streams streams, GET of --size bytes
  idle        --idle connections, one request each, then held: server memory per connection
              (RSS growth over the settled RSS before the first round; HTTP/3 targets)
  storm       --storm clients under load, each migrating once to a new UDP socket (HTTP/3 targets)
  download    one GET of --stream-size bytes through one connection (MB/s; peak growth:
              the server's peak RSS during the transfer minus its RSS when it began)
  upload      one POST of --stream-size bytes through one connection (MB/s, peak growth)

Figures: req/s, p50/p99/max latency, errors, handshakes (every QUIC or TCP connection
the load generator opened: a re-dialled connection cannot hide), server CPU µs per
request from /proc (and the backend's, behind roamgate), RSS, upstream connections
roamgate opened during the measured run, and ratios against h3-plain. Targets
alternate round by round; tables show medians over --rounds (errors and handshakes:
totals; max: the largest).

Faults (--faults): the storm's clients reach each HTTP/3 target through a relay
(impair) that drops, delays and reorders packets both ways, as --fault-loss,
--fault-delay and --fault-jitter say; every request asks for a body derived
from its own id, and the client checks it by hash (a body not its own, or cut
short, fails the run); timeouts are at least 30s; h1-direct (TCP) has no storm.

Exit status: 0 ok, 1 setup failure, 2 usage, 3 a verification failed (errors,
re-dials, failed migrations, moved sessions, a body not its own).

Flags:
`

// parseOptions parses the command line. Flags and URLs may be mixed.
func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{args: args, pids: map[string]int{}}
	fs := flag.NewFlagSet("roamgate-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
	}
	size := sizeFlag(1024)
	streamSize := sizeFlag(256 << 20)
	scenarios := strings.Join(allScenarios, ",")
	targets := strings.Join(defaultTargets, ",")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measured load per target and round (latency, throughput, storm)")
	fs.DurationVar(&o.warmup, "warmup", 0, "load before each measured run, not counted (0: a fifth of --duration, at most 1s)")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; targets alternate round by round and tables show medians")
	fs.StringVar(&scenarios, "scenarios", scenarios, "scenarios to run, comma-separated, or all")
	fs.StringVar(&targets, "targets", targets, "built-in targets to measure, comma-separated")
	fs.IntVar(&o.conns, "conns", 50, "connections of the throughput scenario")
	fs.IntVar(&o.streams, "streams", 4, "concurrent streams (requests) per connection in the throughput scenario")
	fs.Var(&size, "size", "body size of GET / (e.g. 1KiB, 64KiB)")
	fs.Var(&streamSize, "stream-size", "size of the download and the upload (e.g. 256MiB)")
	fs.IntVar(&o.idle, "idle", 5000, "connections the idle scenario holds open")
	fs.IntVar(&o.storm, "storm", 500, "clients of the migration storm, each migrating once")
	fs.IntVar(&o.stormStreams, "storm-streams", 1, "requests each storm client keeps in flight (its backend must see at most this many connections of it)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of one request and of one handshake (transfers get more, by size)")
	fs.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file (-: stdout, the tables then go to stderr)")
	fs.BoolVar(&o.insecure, "insecure", false, "do not verify the certificates of the extra URLs")
	fs.Func("pid", "URL=PID: the process serving an extra URL, for its CPU and RSS (repeatable)", func(v string) error {
		u, p, ok := strings.Cut(v, "=")
		pid, err := strconv.Atoi(p)
		if !ok || err != nil || pid <= 0 {
			return errors.New("want URL=PID")
		}
		o.pids[u] = pid
		return nil
	})
	fs.BoolVar(&o.accessLog, "access-log", false, "let roamgate encode its access log (JSON, discarded) as a deployment would")
	fs.StringVar(&o.steering, "steering", "", "serve roamgate's UDP through its upgrade steering: bpf (SK_REUSEPORT program on the socket) or forward (the forwarding conn); default none, plain sockets")
	fs.BoolVar(&o.childLogs, "child-logs", false, "copy the servers' logs to stderr (else shown only when one fails)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of roamgate during its first measured run of --profile-scenario to this file (go tool pprof)")
	fs.StringVar(&o.heapProfile, "heapprofile", "", "write a heap profile of roamgate at the end of its first measured run of --profile-scenario (connections still open) to this file")
	fs.StringVar(&o.profileOf, "profile-scenario", scThroughput, "the scenario --cpuprofile and --heapprofile profile: latency, throughput or storm")
	faulty := fs.Bool("faults", false, "run the storm through a relay that loses, delays and reorders packets, checking every response body by hash")
	var faults impair.Faults
	fs.Float64Var(&faults.Loss, "fault-loss", 0.05, "with --faults: the fraction of packets the relay drops, each way")
	fs.DurationVar(&faults.Delay, "fault-delay", 0, "with --faults: the delay the relay adds to every packet, each way")
	fs.DurationVar(&faults.Jitter, "fault-jitter", 50*time.Millisecond, "with --faults: up to this much more delay per packet, at random (reorders packets)")

	var urls []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		urls = append(urls, fs.Arg(0))
		args = fs.Args()[1:]
	}
	o.size, o.streamSize = int64(size), int64(streamSize)

	bad := func(format string, a ...any) (*options, error) {
		fmt.Fprintf(stderr, "roamgate-bench: "+format+"\n", a...)
		fmt.Fprintln(stderr, "Run roamgate-bench -h for the flags.")
		return nil, errUsage
	}
	var err error
	if o.scenarios, err = pickList(scenarios, allScenarios, "all"); err != nil {
		return bad("--scenarios: %v", err)
	}
	if o.targets, err = pickList(targets, builtinTargets, ""); err != nil {
		return bad("--targets: %v", err)
	}
	switch {
	case o.duration <= 0:
		return bad("--duration must be positive")
	case o.warmup < 0:
		return bad("--warmup must not be negative")
	case o.rounds < 1:
		return bad("--rounds must be at least 1")
	case o.conns < 1:
		return bad("--conns must be at least 1")
	case o.streams < 1 || o.streams > 100:
		return bad("--streams must be between 1 and 100 (quic-go's default stream limit per connection)")
	case o.size < 0:
		return bad("--size must not be negative")
	case o.streamSize < 1:
		return bad("--stream-size must be at least 1 byte")
	case o.idle < 1:
		return bad("--idle must be at least 1")
	case o.steering != "" && o.steering != "bpf" && o.steering != "forward":
		return bad("--steering: %q (want bpf or forward)", o.steering)
	case o.storm < 1:
		return bad("--storm must be at least 1")
	case o.stormStreams < 1 || o.stormStreams > 8:
		return bad("--storm-streams must be between 1 and 8 (roamgate's default max_conns_per_session)")
	case o.timeout <= 0:
		return bad("--timeout must be positive")
	case o.profileOf != scLatency && o.profileOf != scThroughput && o.profileOf != scStorm:
		return bad("--profile-scenario: want latency, throughput or storm, not %q", o.profileOf)
	case faults.Loss < 0 || faults.Loss >= 1:
		return bad("--fault-loss must be at least 0 and below 1")
	case faults.Delay < 0 || faults.Jitter < 0:
		return bad("--fault-delay and --fault-jitter must not be negative")
	}
	if *faulty {
		if !o.has(scStorm) {
			return bad("--faults impairs the storm scenario, which --scenarios leaves out")
		}
		o.faults = &faults
	} else {
		var given []string
		fs.Visit(func(f *flag.Flag) {
			if strings.HasPrefix(f.Name, "fault-") {
				given = append(given, "--"+f.Name)
			}
		})
		if len(given) > 0 {
			return bad("%s without --faults", strings.Join(given, ", "))
		}
	}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return bad("%q: want an https:// URL of an HTTP/3 server", raw)
		}
		o.extra = append(o.extra, u)
	}
	for u := range o.pids {
		if !slices.ContainsFunc(o.extra, func(x *url.URL) bool { return x.String() == u }) {
			return bad("--pid %s: not one of the URLs given", u)
		}
	}
	return o, nil
}

// pickList parses a comma-separated subset of known (or all, when all is
// not empty and given), returning it in known's order.
func pickList(s string, known []string, all string) ([]string, error) {
	if all != "" && strings.TrimSpace(s) == all {
		return slices.Clone(known), nil
	}
	var out []string
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("unknown %q (want %s)", name, strings.Join(known, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("none given")
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(known, a) - slices.Index(known, b) })
	return out, nil
}

// sizeFlag is a byte count written as 1024, 1KiB, 256MiB, 1GiB, 10KB, 5MB.
type sizeFlag int64

func (s *sizeFlag) String() string { return formatSize(int64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

// sizeUnits are the suffixes parseSize knows, longest first.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

// parseSize parses a byte count with an optional unit (see sizeFlag).
func parseSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a byte count such as 1024, 1KiB or 256MiB", v)
	}
	return n * mult, nil
}

// formatSize writes n in the largest binary unit that divides it.
func formatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10) + "B"
}
