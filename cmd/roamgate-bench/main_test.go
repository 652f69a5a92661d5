package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain runs the tests, or, when the benchmark re-executes the test
// binary as one of its servers (childEnv set), that server.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" && len(os.Args) > 1 && os.Args[1] == childArg {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := childMain(ctx, os.Args[2:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(exitCode(err, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "1024", want: 1024},
		{in: "0", want: 0},
		{in: "1KiB", want: 1024},
		{in: "1MiB", want: 1 << 20},
		{in: "256MiB", want: 256 << 20},
		{in: "2GiB", want: 2 << 30},
		{in: "10KB", want: 10000},
		{in: "5MB", want: 5000000},
		{in: "64K", want: 64 << 10},
		{in: "100B", want: 100},
		{in: " 3 MiB ", want: 3 << 20},
		{in: "", bad: true},
		{in: "MiB", bad: true},
		{in: "-1", bad: true},
		{in: "1.5MiB", bad: true},
		{in: "1TiB", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSize(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("parseSize(%q) = %d, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1000: "1000B", 1024: "1KiB", 1 << 20: "1MiB", 256 << 20: "256MiB", 3 << 30: "3GiB", 1536: "1536B"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParseOptions(t *testing.T) {
	o, err := parseOptions([]string{"--rounds", "2", "https://localhost:8443/", "--scenarios", "throughput,latency", "--pid", "https://localhost:8443/=42", "--insecure"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.rounds != 2 || !o.insecure {
		t.Errorf("rounds %d, insecure %v: flags after a URL were not parsed", o.rounds, o.insecure)
	}
	if got := o.scenarios; len(got) != 2 || got[0] != scLatency || got[1] != scThroughput {
		t.Errorf("scenarios %v, want [latency throughput] (run order)", got)
	}
	if len(o.extra) != 1 || o.pids["https://localhost:8443/"] != 42 {
		t.Errorf("extra %v, pids %v", o.extra, o.pids)
	}
	if got := o.targetNames(); len(got) != 5 || got[4] != "https://localhost:8443/" {
		t.Errorf("targets %v", got)
	}

	for _, args := range [][]string{
		{"--scenarios", "latncy"},
		{"--targets", "nginx"},
		{"--rounds", "0"},
		{"--streams", "101"},
		{"http://localhost/"},
		{"--pid", "https://a/=1"},
		{"--size", "lots"},
	} {
		if _, err := parseOptions(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("parseOptions(%q) = %v, want a usage error", args, err)
		}
	}
	if _, err := parseOptions([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestWarmup(t *testing.T) {
	for _, tc := range []struct{ duration, warmup, want time.Duration }{
		{5 * time.Second, 0, time.Second},
		{200 * time.Millisecond, 0, 40 * time.Millisecond},
		{5 * time.Second, 3 * time.Second, 3 * time.Second},
	} {
		o := &options{duration: tc.duration, warmup: tc.warmup}
		if got := o.warmupFor(); got != tc.want {
			t.Errorf("duration %v, warmup %v: %v, want %v", tc.duration, tc.warmup, got, tc.want)
		}
	}
}

func TestCommandLine(t *testing.T) {
	got := commandLine([]string{"--rounds", "3", "https://localhost:8443/", "a b", "it's"})
	want := `roamgate-bench --rounds 3 https://localhost:8443/ 'a b' 'it'\''s'`
	if got != want {
		t.Errorf("commandLine = %s, want %s", got, want)
	}
}
