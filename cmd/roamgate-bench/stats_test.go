package main

import (
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) latencies {
		out := make(latencies, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make(latencies, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted latencies
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one p50", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50", ms(1, 2), 50, time.Millisecond},
		{"two p51", ms(1, 2), 51, 2 * time.Millisecond},
		{"four p50", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"four p75", ms(1, 2, 3, 4), 75, 3 * time.Millisecond},
		{"five p50", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"max", ms(1, 2, 3, 4, 5), 100, 5 * time.Millisecond},
		{"tiny p", ms(1, 2, 3), 0.001, time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p99.9", hundred, 99.9, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Errorf("percentile(p%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	got := merge([]latencies{{3, 1}, nil, {2, 5, 4}})
	want := latencies{1, 2, 3, 4, 5}
	if len(got) != len(want) {
		t.Fatalf("merge = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("merge = %v, want %v", got, want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		want float64
	}{
		{"one", []float64{4}, 4},
		{"odd", []float64{9, 1, 5}, 5},
		{"even", []float64{4, 1, 3, 2}, 2.5},
		{"equal", []float64{2, 2, 2}, 2},
		{"outlier", []float64{100, 101, 10000}, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.xs...)
			if got := median(in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
			}
			for i := range in {
				if in[i] != tc.xs[i] {
					t.Fatalf("median reordered its input: %v", in)
				}
			}
		})
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestSummarize(t *testing.T) {
	f := func(rps, p50, maxUS float64, errs, hs int64, cpu float64) figures {
		return figures{Conns: 2, Requests: 10, ReqPerSec: rps, P50US: p50, MaxUS: maxUS, Errors: errs, Handshakes: hs, CPUUS: ptr(cpu), UpstreamOpened: ptr(int64(errs))}
	}
	rounds := []figures{
		f(100, 30, 900, 0, 2, 50),
		f(300, 10, 500, 1, 3, 70),
		f(200, 20, 700, 0, 2, 60),
		{Failed: "boom"},
	}
	s := summarize(rounds)
	if s.ReqPerSec != 200 || s.P50US != 20 || *s.CPUUS != 60 {
		t.Errorf("medians: req/s %v, p50 %v, cpu %v; want 200, 20, 60", s.ReqPerSec, s.P50US, *s.CPUUS)
	}
	if s.MaxUS != 900 {
		t.Errorf("max %v, want the largest, 900", s.MaxUS)
	}
	if s.Errors != 1 || s.Handshakes != 7 || s.Requests != 30 || *s.UpstreamOpened != 1 {
		t.Errorf("totals: errors %d, handshakes %d, requests %d, upstream %d; want 1, 7, 30, 1", s.Errors, s.Handshakes, s.Requests, *s.UpstreamOpened)
	}
	if s.Failed == "" || s.BackendCPUUS != nil {
		t.Errorf("failed %q (want noted), backend cpu %v (want absent)", s.Failed, s.BackendCPUUS)
	}
	if s := summarize([]figures{{Failed: "x"}}); s.Failed == "" || s.Requests != 0 {
		t.Errorf("all failed: %+v", s)
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{fmtUS(312.4), "312µs"},
		{fmtUS(1240), "1.24ms"},
		{fmtUS(2.5e6), "2.50s"},
		{fmtUS(0), "-"},
		{diffUS(400, 300), "+100µs"},
		{diffUS(300, 1500), "−1.20ms"},
		{diffUS(300, math.NaN()), "-"},
		{ratio(150, 100), "1.50"},
		{ratio(1, 0), "-"},
		{fmtMiB(3 << 20), "3.0 MiB"},
		{fmtKiB(69632), "68.0 KiB"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
