package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// smokeArgs are the tiniest settings that still run every scenario on
// every built-in target.
var smokeArgs = []string{
	"--duration", "200ms", "--rounds", "1", "--idle", "20", "--storm", "10", "--storm-streams", "2", "--stream-size", "1MiB",
	"--conns", "5", "--scenarios", "latency,throughput,idle,storm,download,upload",
	"--targets", "h3-plain,h3-relay,roamgate,roamgate-unix,h1-direct",
}

// TestSmoke runs the whole benchmark with tiny settings, its servers being
// this test binary re-executed (see TestMain), and checks that every
// scenario has a row per target, that nothing failed, and that it leaves
// no process, temporary file or goroutine behind.
func TestSmoke(t *testing.T) {
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	tmp := t.TempDir()
	quietChildren(t, tmp)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, append(smokeArgs, "--json", jsonPath), &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	out := stdout.String()

	want := map[string][]string{
		scLatency:    {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix, tgDirect},
		scThroughput: {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix, tgDirect},
		scDownload:   {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix, tgDirect},
		scUpload:     {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix, tgDirect},
		scStorm:      {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix},
		scIdle:       {tgPlain, tgRelay, tgRoamgate, tgRoamgateUnix},
	}
	for sc, targets := range want {
		table := section(out, sc)
		if table == "" {
			t.Errorf("no %s table in:\n%s", sc, out)
			continue
		}
		if title, _, _ := strings.Cut(table, "\n"); !strings.Contains(title, " CPUs ==") || !strings.Contains(title, ", on ") {
			t.Errorf("the %s table's title names no machine: %q", sc, title)
		}
		for _, tg := range targets {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(tg) + `\s+\d`).MatchString(table) {
				t.Errorf("%s table has no row for %s:\n%s", sc, tg, table)
			}
		}
		if strings.Contains(table, "FAILED") || strings.Contains(table, "failed:") {
			t.Errorf("%s table reports a failure:\n%s", sc, table)
		}
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("decode the JSON report: %v", err)
	}
	if len(rep.Scenarios) != len(want) {
		t.Errorf("JSON report has %d scenarios, want %d", len(rep.Scenarios), len(want))
	}
	for _, sc := range rep.Scenarios {
		if len(sc.Targets) != len(want[sc.Name]) {
			t.Errorf("%s: %d targets in JSON, want %d", sc.Name, len(sc.Targets), len(want[sc.Name]))
		}
		for _, tr := range sc.Targets {
			s := tr.Summary
			if s.Errors != 0 || s.Failed != "" || s.Handshakes == 0 || s.Requests == 0 {
				t.Errorf("%s %s: errors %d, failed %q, handshakes %d, requests %d", sc.Name, tr.Target, s.Errors, s.Failed, s.Handshakes, s.Requests)
			}
			if s.CPUUS == nil && sc.Name != scIdle {
				t.Errorf("%s %s: no server CPU figure", sc.Name, tr.Target)
			}
			if len(tr.Checks) == 0 {
				t.Errorf("%s %s: no checks", sc.Name, tr.Target)
			}
		}
	}

	// The servers reported their PIDs in the progress log (one per target:
	// the backend is h1-direct's); all are gone.
	pids := regexp.MustCompile(`\(pid (\d+)\)`).FindAllStringSubmatch(stderr.String(), -1)
	if len(pids) != 5 {
		t.Errorf("%d server PIDs in the progress log, want 5:\n%s", len(pids), &stderr)
	}
	for _, m := range pids {
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			t.Errorf("server process %s is still there", m[1])
		}
	}
	if kids := childrenOf(t, os.Getpid()); len(kids) > 0 {
		t.Errorf("child processes left: %v", kids)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
	goleak.VerifyNone(t)
}

// TestInterrupt stops a run in the middle (SIGINT cancels run's context)
// and checks that it ends soon with an error and leaves nothing behind.
func TestInterrupt(t *testing.T) {
	tmp := t.TempDir()
	quietChildren(t, tmp)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--duration", "30s", "--rounds", "1", "--scenarios", "throughput", "--conns", "2"}, &bytes.Buffer{}, stderr)
	}()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(stderr.String(), "throughput round 1/1") {
		if time.Now().After(deadline) {
			t.Fatalf("the run did not start:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an interrupted run returned no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the run did not stop within 30s of its interruption")
	}
	if kids := childrenOf(t, os.Getpid()); len(kids) > 0 {
		t.Errorf("child processes left: %v", kids)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
	goleak.VerifyNone(t)
}

// quietChildren sets the environment the benchmark's children inherit:
// temporary files under tmp (to check that none is left), no warning about
// UDP buffers, and no race detector pause at exit (a second per child by
// default).
func quietChildren(t *testing.T, tmp string) {
	t.Setenv("TMPDIR", tmp)
	t.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// section returns the text of a scenario's table, up to the next one.
func section(out, scenario string) string {
	i := strings.Index(out, "== "+scenario+":")
	if i < 0 {
		return ""
	}
	rest := out[i+3:]
	if j := strings.Index(rest, "\n== "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:])) // state, ppid, ...
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, fmt.Sprintf("%s %s", e.Name(), stat[:i+1]))
		}
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
