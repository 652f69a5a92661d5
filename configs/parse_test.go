package configs

import (
	"fmt"
	"strings"
	"testing"
)

// renderBlocks renders the result of ParseBlocks compactly:
//
//	global: [https_port 1]; site a.com@1:1 b.com@1:8: [reverse_proxy x] [tls internal]
func renderBlocks(global *Block, sites []Block) string {
	var parts []string
	segs := func(b Block) string {
		var s []string
		for _, seg := range b.Segments {
			var words []string
			for _, t := range seg {
				words = append(words, t.Text)
			}
			s = append(s, "["+strings.Join(words, " ")+"]")
		}
		return strings.Join(s, " ")
	}
	if global != nil {
		parts = append(parts, "global: "+segs(*global))
	}
	for _, site := range sites {
		var keys []string
		for _, k := range site.Keys {
			keys = append(keys, fmt.Sprintf("%s@%d:%d", k.Text, k.Line, k.Col))
		}
		parts = append(parts, "site "+strings.Join(keys, " ")+": "+segs(site))
	}
	return strings.Join(parts, "; ")
}

func TestParseBlocks(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"empty", "", ""},
		{"global only", "{\n\thttps_port 1\n}", "global: [https_port 1]"},
		{"braces without space are a word", "{}", "site {}@1:1: "},
		{"empty global braces", "{\n}\na {\n}", "global: ; site a@3:1: "},
		{"site", "a.com {\n\treverse_proxy x\n\ttls internal\n}", "site a.com@1:1: [reverse_proxy x] [tls internal]"},
		{"global and sites", "{\n\thttp_port 1\n}\na {\n\tb\n}\nc {\n\td\n}",
			"global: [http_port 1]; site a@4:1: [b]; site c@7:1: [d]"},
		{"comma separated keys", "a.com, b.com,c.com ,d.com {\n}", "site a.com@1:1 b.com@1:8 c.com@1:14 d.com@1:21: "},
		{"keys over lines", "a.com,\n  b.com,\n\tc.com d.com {\n}", "site a.com@1:1 b.com@2:3 c.com@3:2 d.com@3:8: "},
		{"lone commas", "a , b {\n}", "site a@1:1 b@1:5: "},
		{"shorthand", "a.com\nreverse_proxy x\ntls internal", "site a.com@1:1: [reverse_proxy x] [tls internal]"},
		{"shorthand after global", "{\n\tx 1\n}\na.com\nreverse_proxy x {\n\ty 2\n}",
			"global: [x 1]; site a.com@4:1: [reverse_proxy x { y 2 }]"},
		{"shorthand without directives", "a.com b.com", "site a.com@1:1 b.com@1:7: "},
		{"nested blocks", "a {\n\tb 1 {\n\t\tc {\n\t\t\td\n\t\t}\n\t\te\n\t}\n\tf\n}",
			"site a@1:1: [b 1 { c { d } e }] [f]"},
		{"one-line blocks", "a { b c { d; e f } ; g }", "site a@1:1: [b c { d e f }] [g]"},
		{"block on one line with site", "{ x { y } }\na { b }", "global: [x { y }]; site a@2:1: [b]"},
		{"semicolons split directives", "a {\n\tb; c d;\n}", "site a@1:1: [b] [c d]"},
		{"quoted braces are words", "a {\n\tb \"{\" \"}\"\n}", "site a@1:1: [b { }]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Lex("Roamfile", []byte(tt.src), testEnv)
			if err != nil {
				t.Fatalf("Lex: %v", err)
			}
			global, sites, err := ParseBlocks(toks)
			if err != nil {
				t.Fatalf("ParseBlocks(%q): %v", tt.src, err)
			}
			if got := renderBlocks(global, sites); got != tt.want {
				t.Errorf("ParseBlocks(%q)\n got %s\nwant %s", tt.src, got, tt.want)
			}
		})
	}
}

func TestParseBlocksErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"unclosed global", "{\n\thttps_port 1\n", `Roamfile:1:1: "{" has no matching "}"`},
		{"unclosed site", "a {\n\tb\n", `Roamfile:1:3: "{" has no matching "}"`},
		{"unclosed outer block", "a {\n\tb {\n\t\tc\n}\n", `Roamfile:1:3: "{" has no matching "}"`},
		{"unclosed directive block", "a {\n\tb {\n\t\tc\n", `Roamfile:2:4: "{" has no matching "}"`},
		{"unclosed innermost", "a {\n\tb {\n\t\tc {\n", `Roamfile:3:5: "{" has no matching "}"`},
		{"stray close", "a {\n\tb\n}\n}", `Roamfile:4:1: unexpected "}"`},
		{"stray close in shorthand", "a\nb\n}", `Roamfile:3:1: unexpected "}"`},
		{"close in keys", "a } {", `Roamfile:1:3: unexpected "}"`},
		{"second global block", "a {\n}\n{\n}", `Roamfile:3:1: unexpected "{": site block without address (the global options block must come first)`},
		{"brace on its own line", "a {\n\tb\n\t{\n\t}\n}", `Roamfile:3:2: unexpected "{" (a block opens at the end of its directive's line)`},
		{"brace after semicolon", "a {\n\tb; {\n\t}\n}", `Roamfile:2:5: unexpected "{" (a block opens at the end of its directive's line)`},
		{"site brace on next line", "a.com\n{\n}", `Roamfile:2:1: unexpected "{" (a block opens at the end of its directive's line)`},
		{"second site without braces", "a {\n}\nb\nc", `Roamfile:3:1: expected "{" after site address "b" (only a file with a single site may leave out the braces)`},
		{"only commas", ", {\n}", `Roamfile:1:1: missing site address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Lex("Roamfile", []byte(tt.src), testEnv)
			if err != nil {
				t.Fatalf("Lex: %v", err)
			}
			global, sites, err := ParseBlocks(toks)
			if err == nil {
				t.Fatalf("ParseBlocks(%q) = %s, want error", tt.src, renderBlocks(global, sites))
			}
			if err.Error() != tt.want {
				t.Errorf("ParseBlocks(%q) error\n got %s\nwant %s", tt.src, err, tt.want)
			}
		})
	}
}

func TestSegmentDirective(t *testing.T) {
	if got := (Segment{}).Directive(); got != "" {
		t.Errorf("empty Segment.Directive() = %q", got)
	}
	if got := (Segment{{Text: "tls"}, {Text: "internal"}}).Directive(); got != "tls" {
		t.Errorf("Directive() = %q, want tls", got)
	}
}
