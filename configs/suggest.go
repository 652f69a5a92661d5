package configs

import "strings"

// didYouMean returns " (did you mean X?)" for the candidate closest to name,
// or "" when none is close.
func didYouMean(name string, candidates []string) string {
	if s := suggest(name, candidates); s != "" {
		return " (did you mean " + s + "?)"
	}
	return ""
}

// suggest returns the candidate that name most likely misspells: the first
// that starts with it (for names of three bytes or more), else the nearest
// within an edit distance of about a third of name's length. It
// ignores case and returns "" when nothing is close.
func suggest(name string, candidates []string) string {
	name = strings.ToLower(name)
	if len(name) > 64 { // no directive is that long; bound the work
		return ""
	}
	if len(name) >= 3 {
		for _, c := range candidates {
			if strings.HasPrefix(c, name) {
				return c
			}
		}
	}
	best, bestDist := "", min(3, max(1, len(name)/3))+1
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance returns the optimal string alignment distance between a
// and b in bytes: the Levenshtein distance, with a swap of two adjacent
// bytes ("tsl" for "tls") counting as one edit.
func editDistance(a, b string) int {
	// Three rows of the dynamic-programming table: i-2, i-1 and i.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
