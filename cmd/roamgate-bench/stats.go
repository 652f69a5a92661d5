package main

import (
	"math"
	"slices"
	"time"
)

// latencies collects the latencies of one worker; workers each own one, so
// recording takes no lock, and merge combines them when the run is over.
type latencies []time.Duration

// merge concatenates the workers' latencies and sorts them.
func merge(parts []latencies) latencies {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	all := make(latencies, 0, n)
	for _, p := range parts {
		all = append(all, p...)
	}
	slices.Sort(all)
	return all
}

// percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest value with at least p % of the values
// at or below it. It is 0 for no values.
func percentile(sorted latencies, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// median returns the median of xs (the mean of the middle two for an even
// count), or NaN for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// medianOf returns the median of field over rs, skipping NaN values.
func medianOf[T any](rs []T, field func(T) float64) float64 {
	xs := make([]float64, 0, len(rs))
	for _, r := range rs {
		if v := field(r); !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	return median(xs)
}

// maxOf returns the largest value of field over rs, or NaN for none.
func maxOf[T any](rs []T, field func(T) float64) float64 {
	out := math.NaN()
	for _, r := range rs {
		if v := field(r); !math.IsNaN(v) && (math.IsNaN(out) || v > out) {
			out = v
		}
	}
	return out
}

// sumOf returns the sum of field over rs.
func sumOf[T any, N ~int | ~int64 | ~float64](rs []T, field func(T) N) N {
	var s N
	for _, r := range rs {
		s += field(r)
	}
	return s
}
