package configs

import (
	"errors"
	"strconv"
	"testing"
)

// segment lexes src, which must hold one directive, into a Segment.
func segment(t *testing.T, src string) Segment {
	t.Helper()
	toks, err := Lex("Roamfile", []byte(src), testEnv)
	if err != nil {
		t.Fatal(err)
	}
	p := &parser{toks: toks}
	seg, err := p.segment()
	if err != nil || p.i != len(toks) {
		t.Fatalf("%q is not one segment: %v", src, err)
	}
	return seg
}

func TestCursorNextArgAndLine(t *testing.T) {
	c := NewCursor(segment(t, "a b c {\n\td e\n}"))
	if c.Val() != "" || c.Token() != (Token{}) {
		t.Errorf("before Next: Val %q, Token %+v", c.Val(), c.Token())
	}
	if !c.NextArg() || c.Val() != "a" {
		t.Fatalf("first NextArg: %q", c.Val())
	}
	if n := c.CountRemainingArgs(); n != 2 {
		t.Errorf("CountRemainingArgs = %d, want 2", n)
	}
	if c.Val() != "a" {
		t.Errorf("CountRemainingArgs moved the cursor to %q", c.Val())
	}
	if c.NextLine() {
		t.Errorf("NextLine on a line with arguments loaded %q", c.Val())
	}
	if got := c.RemainingArgs(); len(got) != 2 || got[0] != "b" || got[1] != "c" {
		t.Errorf("RemainingArgs = %q, want [b c]", got)
	}
	if c.NextArg() || c.Val() != "c" {
		t.Errorf("NextArg loaded the brace: %q", c.Val())
	}
	if c.NextLine() {
		t.Errorf("NextLine crossed onto the brace of the same line: %q", c.Val())
	}
	if !c.Next() || c.Val() != "{" || c.Nesting() != 1 {
		t.Fatalf("Next = %q at nesting %d, want { at 1", c.Val(), c.Nesting())
	}
	if !c.NextLine() || c.Val() != "d" {
		t.Fatalf("NextLine after { = %q, want d", c.Val())
	}
	if !c.NextArg() || c.Val() != "e" || c.NextArg() {
		t.Errorf("args of d: %q", c.Val())
	}
	if !c.NextLine() || c.Val() != "}" || c.Nesting() != 0 || c.Next() {
		t.Errorf("end: %q at nesting %d", c.Val(), c.Nesting())
	}
}

func TestCursorNextBlock(t *testing.T) {
	src := `reverse_proxy a {
	to b c
	skipped x {
		deep {
			deeper 1
		}
	}
	sub {
		x 1
		y
	}
	dial_timeout 1s; last
}`
	c := NewCursor(segment(t, src))
	c.Next()
	if c.NextBlock(0) {
		t.Fatalf("NextBlock entered a block with arguments left: at %q", c.Val())
	}
	c.RemainingArgs()
	var got []string
	for c.NextBlock(0) {
		got = append(got, c.Val())
		switch c.Val() {
		case "to":
			c.NextArg() // leave "c" unread: NextBlock skips it
		case "sub":
			for c.NextBlock(1) {
				got = append(got, "sub."+c.Val()+"@"+strconv.Itoa(c.Nesting()))
				c.RemainingArgs()
			}
			if c.Val() != "}" || c.Nesting() != 1 {
				t.Errorf("after inner block: at %q, nesting %d", c.Val(), c.Nesting())
			}
		}
	}
	want := []string{"to", "skipped", "sub", "sub.x@2", "sub.y@2", "dial_timeout", "last"}
	if len(got) != len(want) {
		t.Fatalf("lines %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("lines %q, want %q", got, want)
		}
	}
	if c.Nesting() != 0 || c.Next() {
		t.Errorf("after the block: nesting %d, at %q", c.Nesting(), c.Val())
	}
}

func TestCursorNextBlockOneLine(t *testing.T) {
	c := NewCursor(segment(t, "log { level debug; format json }"))
	c.Next()
	var got [][]string
	for c.NextBlock(0) {
		got = append(got, append([]string{c.Val()}, c.RemainingArgs()...))
	}
	if len(got) != 2 || len(got[0]) != 2 || got[0][1] != "debug" || len(got[1]) != 2 || got[1][1] != "json" {
		t.Errorf("lines %q, want [[level debug] [format json]]", got)
	}
}

func TestCursorNextBlockEmpty(t *testing.T) {
	for _, src := range []string{"a {\n}", "a", "a { }"} {
		c := NewCursor(segment(t, src))
		c.Next()
		if c.NextBlock(0) {
			t.Errorf("%q: NextBlock found a line: %q", src, c.Val())
		}
		if c.NextBlock(0) {
			t.Errorf("%q: second NextBlock found a line: %q", src, c.Val())
		}
	}
}

func TestCursorErrors(t *testing.T) {
	seg := segment(t, "reverse_proxy a b {\n\tdial_timeout\n\tmax 1 2\n}")
	tests := []struct {
		name string
		move func(c *Cursor)
		err  func(c *Cursor) error
		want string
	}{
		{"ArgErr on directive name", func(c *Cursor) { c.Next() }, (*Cursor).ArgErr,
			`Roamfile:1:15: reverse_proxy: unexpected argument "a"`},
		{"ArgErr extra argument", func(c *Cursor) { c.Next(); c.NextArg() }, (*Cursor).ArgErr,
			`Roamfile:1:17: reverse_proxy: unexpected argument "b"`},
		{"ArgErr missing in block", func(c *Cursor) { c.Next(); c.RemainingArgs(); c.NextBlock(0) }, (*Cursor).ArgErr,
			`Roamfile:2:2: reverse_proxy: dial_timeout: missing argument`},
		{"ArgErr extra in block", func(c *Cursor) { c.Next(); c.RemainingArgs(); c.NextBlock(0); c.NextBlock(0); c.NextArg() }, (*Cursor).ArgErr,
			`Roamfile:3:8: reverse_proxy: max: unexpected argument "2"`},
		{"Errf", func(c *Cursor) { c.Next(); c.NextArg() }, func(c *Cursor) error { return c.Errf("bad %q", c.Val()) },
			`Roamfile:1:15: reverse_proxy: bad "a"`},
		{"Err before first token", func(c *Cursor) {}, func(c *Cursor) error { return c.Err("100% odd") },
			`Roamfile:1:1: reverse_proxy: 100% odd`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCursor(seg)
			tt.move(c)
			err := tt.err(c)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error\n got %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestCursorErrorCauses(t *testing.T) {
	c := NewCursor(segment(t, "x 5x"))
	c.Next()
	c.NextArg()
	cause := errors.New("cause")

	err := c.Errf("wrapped: %w", cause)
	if err.Error() != "Roamfile:1:3: x: wrapped: cause" || !errors.Is(err, cause) {
		t.Errorf("Errf with %%w = %v, Is(cause) = %v", err, errors.Is(err, cause))
	}
	err = c.Wrapf(cause, "invalid %q", c.Val())
	if err.Error() != `Roamfile:1:3: x: invalid "5x"` || !errors.Is(err, cause) {
		t.Errorf("Wrapf = %v, Is(cause) = %v", err, errors.Is(err, cause))
	}
	if err := c.Errf("plain"); errors.Unwrap(err) != nil {
		t.Errorf("Errf without %%w has cause %v", errors.Unwrap(err))
	}
}

func TestCursorHandMadeTokens(t *testing.T) {
	// Tokens made without Lex break lines by line number.
	seg := Segment{
		{File: "f", Line: 1, Col: 1, Text: "a"},
		{File: "f", Line: 1, Col: 3, Text: "b"},
		{File: "f", Line: 1, Col: 5, Text: "{"},
		{File: "f", Line: 2, Col: 2, Text: "c"},
		{File: "f", Line: 2, Col: 4, Text: "d"},
		{File: "f", Line: 3, Col: 1, Text: "}"},
	}
	c := NewCursor(seg)
	c.Next()
	if args := c.RemainingArgs(); len(args) != 1 || args[0] != "b" {
		t.Fatalf("RemainingArgs = %q", args)
	}
	if !c.NextBlock(0) || c.Val() != "c" || c.CountRemainingArgs() != 1 || c.NextBlock(0) {
		t.Errorf("block walk ended at %q", c.Val())
	}
}
