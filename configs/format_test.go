package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sameDirectives reports how a and b read differently, token by token: text,
// quoting, and whether a token starts a directive line ("" if they do not).
func sameDirectives(t testing.TB, a, b []byte) string {
	t.Helper()
	env := func(string) (string, bool) { return "x", true }
	ta, err := Lex("a", a, env)
	if err != nil {
		return "a: " + err.Error()
	}
	tb, err := Lex("b", b, env)
	if err != nil {
		return "b: " + err.Error()
	}
	if len(ta) != len(tb) {
		return "token counts differ"
	}
	for i := range ta {
		if ta[i].Text != tb[i].Text || ta[i].Quoted != tb[i].Quoted {
			return "token " + ta[i].Text + " became " + tb[i].Text
		}
		if i > 0 && startsLine(ta[i-1], ta[i]) != startsLine(tb[i-1], tb[i]) {
			return "token " + ta[i].Text + " moved to or from a line of its own"
		}
	}
	return ""
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"one directive per line, tabs, braces",
			"{\n  admin  :2019;log {\nlevel debug }\n}\na.com, b.com { respond 1 }\n",
			"{\n\tadmin :2019\n\tlog {\n\t\tlevel debug\n\t}\n}\n\na.com, b.com {\n\trespond 1\n}\n"},
		{"blank lines: one at most, none inside braces, one between sites",
			"a {\n\n\n  reverse_proxy b\n\n\n\n  header X y\n\n}\nb {\n respond 2\n}\n\n\n\n",
			"a {\n\treverse_proxy b\n\n\theader X y\n}\n\nb {\n\trespond 2\n}\n"},
		{"comments kept, aligned ones as written",
			"# top\na {\n    # inside\n\trespond 1      # why\n}\n",
			"# top\na {\n\t# inside\n\trespond 1      # why\n}\n"},
		{"quotes, placeholders and multi-line strings as written",
			"a {\n   respond \"x  y\nz\" `b;c` {$ENV:d} {host}\n}\n",
			"a {\n\trespond \"x  y\nz\" `b;c` {$ENV:d} {host}\n}\n"},
		{"a brace on a line of its own stays there",
			"{\nadmin :1\n}\n",
			"{\n\tadmin :1\n}\n"},
		{"CRLF and a byte order mark",
			"\uFEFFa {\r\n\trespond 1\r\n}\r\n",
			"a {\n\trespond 1\n}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Format("Roamfile", []byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
			if d := sameDirectives(t, []byte(tc.in), got); d != "" {
				t.Fatalf("reads differently: %s", d)
			}
			if again, _ := Format("Roamfile", got); string(again) != string(got) {
				t.Fatalf("not idempotent:\n%s", again)
			}
		})
	}
	for _, tc := range []struct{ in, want string }{
		{"a {\n\trespond 1\n", `Roamfile:1:3: "{" has no matching "}"`},
		{"a {\n\trespond \"1\n}\n", `Roamfile:2:10: unterminated quoted string`},
	} {
		if _, err := Format("Roamfile", []byte(tc.in)); err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %s", tc.in, err, tc.want)
		}
	}
}

// roamfiles are the repository's Roamfiles: the examples and the test data.
func roamfiles(t testing.TB) []string {
	t.Helper()
	a, _ := filepath.Glob("../examples/*/Roamfile")
	b, _ := filepath.Glob("testdata/*.Roamfile")
	if len(a) < 4 || len(b) < 4 {
		t.Fatalf("found %v %v", a, b)
	}
	return append(a, b...)
}

// TestExamplesAreFormatted: the examples are in the layout fmt gives, and
// every Roamfile of the repository reads the same after fmt.
func TestExamplesAreFormatted(t *testing.T) {
	for _, f := range roamfiles(t) {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Format(f, src)
		if err != nil {
			if strings.Contains(f, "errors") {
				continue // the error test data need not lex
			}
			t.Fatalf("%s: %v", f, err)
		}
		if d := sameDirectives(t, src, got); d != "" {
			t.Errorf("%s reads differently after fmt: %s", f, d)
		}
		if strings.Contains(f, "examples") && string(got) != string(src) {
			t.Errorf("%s is not in fmt's layout: roamgate fmt --overwrite %s", f, f)
		}
	}
}

// FuzzFormat: whatever Format takes, its output reads to the same tokens
// and directives, and formats to itself.
func FuzzFormat(f *testing.F) {
	for _, p := range roamfiles(f) {
		if src, err := os.ReadFile(p); err == nil {
			f.Add(src)
		}
	}
	f.Add([]byte("a { b; c { d } } # e\n\"f\ng\" `h`"))
	f.Fuzz(func(t *testing.T, src []byte) {
		got, err := Format("Roamfile", src)
		if err != nil {
			return
		}
		if d := sameDirectives(t, src, got); d != "" {
			t.Fatalf("reads differently: %s\nin  %q\nout %q", d, src, got)
		}
		again, err := Format("Roamfile", got)
		if err != nil || string(again) != string(got) {
			t.Fatalf("not idempotent: %v\nonce  %q\ntwice %q", err, got, again)
		}
	})
}
