package configs

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// testEnv is the environment of the tests: HOST and PORT are set, EMPTY is
// set to "", NL holds a newline and BRACE a lone "{".
func testEnv(name string) (string, bool) {
	v, ok := map[string]string{
		"HOST":  "example.com",
		"PORT":  "8080",
		"EMPTY": "",
		"NL":    "a\nb",
		"BRACE": "{",
		// storage redis's password
		"REDIS_PASSWORD": "hunter2",
	}[name]
	return v, ok
}

// tok renders a token as "line:col text", with the text quoted with
// Go syntax and followed by " Q" when the token was quoted in the file.
func tok(t Token) string {
	s := fmt.Sprintf("%d:%d %q", t.Line, t.Col, t.Text)
	if t.Quoted {
		s += " Q"
	}
	return s
}

func TestLex(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"empty", "", nil},
		{"blank", " \t\r\n\n", nil},
		{"words", "a bc\n  def\tg", []string{`1:1 "a"`, `1:3 "bc"`, `2:3 "def"`, `2:7 "g"`}},
		{"crlf", "a\r\nb", []string{`1:1 "a"`, `2:1 "b"`}},
		{"bom", "\uFEFFa b", []string{`1:1 "a"`, `1:3 "b"`}},
		{"comment", "# x y\na # b c\n#\nd", []string{`2:1 "a"`, `4:1 "d"`}},
		{"hash inside word", "a#b c#", []string{`1:1 "a#b"`, `1:5 "c#"`}},
		{"semicolons", "a b;c;;d ;", []string{`1:1 "a"`, `1:3 "b"`, `1:5 "c"`, `1:8 "d"`}},
		{"quoted", `a "b c" "" d`, []string{`1:1 "a"`, `1:3 "b c" Q`, `1:9 "" Q`, `1:12 "d"`}},
		{"quoted semicolon and hash", `"a;b #c"`, []string{`1:1 "a;b #c" Q`}},
		{"escapes", `"a\"b\\c\d"`, []string{`1:1 "a\"b\\c\\d" Q`}},
		{"quoted newline", "\"a\nb\" c\nd", []string{`1:1 "a\nb" Q`, `2:4 "c"`, `3:1 "d"`}},
		{"backquoted", "`a\\\"b\nc` d", []string{"1:1 \"a\\\\\\\"b\\nc\" Q", `2:4 "d"`}},
		{"quote ends word", `"a"b`, []string{`1:1 "a" Q`, `1:4 "b"`}},
		{"quote inside word", `a"b c"`, []string{`1:1 "a\"b"`, `1:5 "c\""`}},
		{"braces", "a {\n\tb\n}", []string{`1:1 "a"`, `1:3 "{"`, `2:2 "b"`, `3:1 "}"`}},
		{"braces in words", "{a} a{ }b {}", []string{`1:1 "{a}"`, `1:5 "a{"`, `1:8 "}b"`, `1:11 "{}"`}},
		{"quoted brace", `"{" "}"`, []string{`1:1 "{" Q`, `1:5 "}" Q`}},
		{"one-line block", "log { level debug; format json }", []string{
			`1:1 "log"`, `1:5 "{"`, `1:7 "level"`, `1:13 "debug"`, `1:20 "format"`, `1:27 "json"`, `1:32 "}"`,
		}},
		{"env", "{$HOST}:{$PORT} x", []string{`1:1 "example.com:8080"`, `1:17 "x"`}},
		{"env default", "{$UNSET:localhost}:{$PORT:1} {$HOST:x}", []string{`1:1 "localhost:8080"`, `1:30 "example.com"`}},
		{"env default only when unset", "a{$EMPTY:x}b", []string{`1:1 "ab"`}},
		{"env default with colon", "{$UNSET:a:b}", []string{`1:1 "a:b"`}},
		{"env empty drops token", "a {$UNSET:} {$EMPTY} b", []string{`1:1 "a"`, `1:22 "b"`}},
		{"env empty default drops token", "a {$UNSET:} b", []string{`1:1 "a"`, `1:13 "b"`}},
		{"env quoted empty kept", `a "{$UNSET:}" b`, []string{`1:1 "a"`, `1:3 "" Q`, `1:15 "b"`}},
		{"env quoted", `"x {$HOST} y" ` + "`{$PORT}`", []string{`1:1 "x example.com y" Q`, `1:15 "8080" Q`}},
		{"env value not rescanned", `{$NL} "{$NL}"`, []string{`1:1 "a\nb"`, `1:7 "a\nb" Q`}},
		{"env brace is text", "{$BRACE}", []string{`1:1 "{"`}},
		{"env positions", "{$HOST}\n  {$PORT} z", []string{`1:1 "example.com"`, `2:3 "8080"`, `2:11 "z"`}},
		{"dollar without brace", "$HOST {HOST} $", []string{`1:1 "$HOST"`, `1:7 "{HOST}"`, `1:14 "$"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Lex("Roamfile", []byte(tt.src), testEnv)
			if err != nil {
				t.Fatalf("Lex: %v", err)
			}
			var got []string
			for _, tk := range toks {
				if tk.File != "Roamfile" {
					t.Errorf("token %s: File = %q", tok(tk), tk.File)
				}
				got = append(got, tok(tk))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lex(%q)\n got %q\nwant %q", tt.src, got, tt.want)
			}
		})
	}
}

// lines groups tokens into directive lines as the parser sees them.
func lines(toks []Token) [][]string {
	var out [][]string
	for i, t := range toks {
		if i == 0 || startsLine(toks[i-1], t) {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], t.Text)
	}
	return out
}

func TestLexLines(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"newlines", "a b\nc\n\nd e", "[[a b] [c] [d e]]"},
		{"semicolons", "a b; c;d", "[[a b] [c] [d]]"},
		{"braces end lines", "a { b c } d", "[[a {] [b c] [}] [d]]"},
		{"one-line block", "log { level debug; format json }", "[[log {] [level debug] [format json] [}]]"},
		{"multi-line quoted token", "a \"b\nc\" d\ne", "[[a b\nc d] [e]]"},
		{"multi-line raw token", "a `b\n\nc` d\ne", "[[a b\n\nc d] [e]]"},
		{"env newline stays on line", "a {$NL} b\nc", "[[a a\nb b] [c]]"},
		{"dropped token keeps semicolon", "a; {$UNSET:} b", "[[a] [b]]"},
		{"quoted braces are words", `a "{" "}" b`, "[[a { } b]]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Lex("Roamfile", []byte(tt.src), testEnv)
			if err != nil {
				t.Fatalf("Lex: %v", err)
			}
			if got := fmt.Sprint(lines(toks)); got != tt.want {
				t.Errorf("lines of %q = %s, want %s", tt.src, got, tt.want)
			}
		})
	}
}

func TestLexErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"unterminated quote", "a\n  \"b c\nd", `Roamfile:2:3: unterminated quoted string`},
		{"unterminated backquote", "a `b", `Roamfile:1:3: unterminated quoted string`},
		{"escaped closing quote", `"a\"`, `Roamfile:1:1: unterminated quoted string`},
		{"unterminated placeholder", "a\nb {$HOST", `Roamfile:2:3: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"placeholder ends at space", "{$HOST:a b}", `Roamfile:1:1: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"placeholder ends at semicolon", "x{$HOST;}", `Roamfile:1:2: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"placeholder ends at quote", `"{$HOST" }`, `Roamfile:1:2: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"placeholder ends at newline", "\"{$HOST\n}\"", `Roamfile:1:2: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"placeholder at end", "{$", `Roamfile:1:1: unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`},
		{"empty name", "a {$:x}", `Roamfile:1:3: empty variable name in "{$...}" placeholder`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			toks, err := Lex("Roamfile", []byte(tt.src), testEnv)
			if err == nil {
				t.Fatalf("Lex(%q) = %q, want error", tt.src, lines(toks))
			}
			if err.Error() != tt.want {
				t.Errorf("Lex(%q) error\n got %s\nwant %s", tt.src, err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("error %T is not an *Error", err)
			}
		})
	}
}

func TestLexNilEnvUsesProcessEnvironment(t *testing.T) {
	t.Setenv("ROAMGATE_TEST_LEX", "v")
	toks, err := Lex("Roamfile", []byte("{$ROAMGATE_TEST_LEX}"), nil)
	if err != nil || len(toks) != 1 || toks[0].Text != "v" {
		t.Fatalf("Lex = %v, %v; want one token v", toks, err)
	}
}

// checkErrorPositions fails t unless err, a Parse or Lex error, consists of
// lines "file:line:col: ..." within src (and at most one closing
// "too many errors" line), and every *Error in it is within src.
func checkErrorPositions(t *testing.T, src []byte, err error) {
	t.Helper()
	srcLines := bytes.Split(bytes.TrimPrefix(src, []byte("\uFEFF")), []byte("\n"))
	inBounds := func(p Position) bool {
		return p.File == "Roamfile" && p.Line >= 1 && p.Line <= len(srcLines) &&
			p.Col >= 1 && p.Col <= len(srcLines[p.Line-1])+1
	}
	msgs := strings.Split(err.Error(), "\n")
	for i, msg := range msgs {
		if i == len(msgs)-1 && i == maxErrors && strings.HasPrefix(msg, "too many errors: ") {
			continue
		}
		var p Position
		p.File = "Roamfile"
		if _, scanErr := fmt.Sscanf(msg, "Roamfile:%d:%d: ", &p.Line, &p.Col); scanErr != nil || !inBounds(p) {
			t.Fatalf("error line %q: no position within the input", msg)
		}
	}
	errs := configErrors(err)
	if len(errs) == 0 {
		t.Fatalf("error %q has no *Error", err)
	}
	for _, e := range errs {
		if !inBounds(e.Pos) {
			t.Fatalf("error %q: position %s out of bounds", e, e.Pos)
		}
	}
}

// configErrors returns the *Errors in err, which may be joined.
func configErrors(err error) []*Error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []*Error
		for _, err := range j.Unwrap() {
			errs = append(errs, configErrors(err)...)
		}
		return errs
	}
	var e *Error
	if errors.As(err, &e) {
		return []*Error{e}
	}
	return nil
}

func FuzzLex(f *testing.F) {
	addSeeds(f)
	for _, s := range []string{
		"a \"b\\\"c\" `d` # e\nf;g{$HOST}{$UNSET:x} {$",
		"\"unterminated", "{$:x}", "{ } {} \"{\"", "a\r\nb\uFEFF",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		toks, err := Lex("Roamfile", src, testEnv)
		if err != nil {
			checkErrorPositions(t, src, err)
			return
		}
		body := bytes.TrimPrefix(src, []byte("\uFEFF"))
		starts := []int{0} // offset of each line
		for i, ch := range body {
			if ch == '\n' {
				starts = append(starts, i+1)
			}
		}
		prev := -1
		for _, tk := range toks {
			if tk.Line < 1 || tk.Line > len(starts) || tk.Col < 1 {
				t.Fatalf("token %s out of bounds", tok(tk))
			}
			off := starts[tk.Line-1] + tk.Col - 1
			if off >= len(body) || off <= prev {
				t.Fatalf("token %s: offset %d out of order or bounds", tok(tk), off)
			}
			prev = off
			switch {
			case tk.Quoted:
				if body[off] != '"' && body[off] != '`' {
					t.Fatalf("quoted token %s does not start at a quote", tok(tk))
				}
			case !tk.subst:
				if !bytes.HasPrefix(body[off:], []byte(tk.Text)) || tk.Text == "" {
					t.Fatalf("token %s is not the source text at its position", tok(tk))
				}
			}
		}
	})
}
