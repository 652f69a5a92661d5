package configs

import "testing"

func TestSuggest(t *testing.T) {
	directives := []string{"reverse_proxy", "tls"}
	options := []string{"dial_timeout", "max_conns_per_session", "response_header_timeout", "to"}
	tests := []struct {
		name       string
		candidates []string
		want       string
	}{
		{"revers_proxy", directives, "reverse_proxy"},
		{"reverse-proxy", directives, "reverse_proxy"},
		{"Reverse_Proxy", directives, "reverse_proxy"},
		{"rev", directives, "reverse_proxy"},
		{"tsl", directives, "tls"},
		{"proxy", directives, ""},
		{"re", directives, ""},
		{"respond", directives, ""},
		{"", directives, ""},
		{"max_con", options, "max_conns_per_session"},
		{"max_conns", options, "max_conns_per_session"},
		{"dial_timout", options, "dial_timeout"},
		{"response_timeout", options, ""},
		{"tp", options, "to"},
		{"timeout", options, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := suggest(tt.name, tt.candidates); got != tt.want {
				t.Errorf("suggest(%q) = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"", "abc", 3},
		{"abc", "", 3},
		{"kitten", "sitting", 3},
		{"revers_proxy", "reverse_proxy", 1},
		{"tsl", "tls", 1},
		{"ab", "ba", 1},
		{"ca", "abc", 3},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestDidYouMean(t *testing.T) {
	if got := didYouMean("tsl", []string{"tls"}); got != " (did you mean tls?)" {
		t.Errorf("didYouMean = %q", got)
	}
	if got := didYouMean("xyz", []string{"tls"}); got != "" {
		t.Errorf("didYouMean = %q, want none", got)
	}
}
