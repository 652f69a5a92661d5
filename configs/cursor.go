package configs

import (
	"errors"
	"fmt"
)

// Cursor walks the tokens of one Segment for the code of its directive, like
// Caddy's caddyfile.Dispenser. It starts before the first token, so the
// first Next loads the directive's name.
//
// A line ends at a newline, at a ';', and at a brace: a "{" ends the line it
// opens a block on, and a "}" stands on a line of its own. So
//
//	log { level debug; format json }
//
// reads as "log {", "level debug", "format json" and "}".
type Cursor struct {
	seg     Segment
	i       int // current token; -1 before the first
	nesting int // blocks opened and not closed, up to the current token
}

// NewCursor returns a Cursor before the first token of seg.
func NewCursor(seg Segment) *Cursor { return &Cursor{seg: seg, i: -1} }

// Next loads the next token, crossing lines and braces, and reports whether
// there was one.
func (c *Cursor) Next() bool {
	if c.i+1 >= len(c.seg) {
		return false
	}
	c.i++
	switch t := c.seg[c.i]; {
	case isOpen(t):
		c.nesting++
	case isClose(t):
		c.nesting--
	}
	return true
}

// NextArg loads the next token if it is an argument on the current line: on
// the same line and not a brace. Before the first token it loads that.
func (c *Cursor) NextArg() bool {
	if c.i >= 0 && !c.isArg(c.i+1) {
		return false
	}
	return c.Next()
}

// NextLine loads the next token if it starts a new line. Before the first
// token it loads that.
func (c *Cursor) NextLine() bool {
	if c.i >= 0 && (c.i+1 >= len(c.seg) || !startsLine(c.seg[c.i], c.seg[c.i+1])) {
		return false
	}
	return c.Next()
}

// NextBlock loads the first token of the next line of the block at
// nesting+1 and reports whether there is one. Called first with the cursor
// at the last argument of a line that ends with "{", it enters the block;
// called again, it skips what is left of the current line, including any
// block the line opens, so directive code that stops reading a line early
// (after an error, say) still lands on the next one. It returns false, with
// the cursor on the closing "}", at the end of the block. Use it as
//
//	for c.NextBlock(0) {
//		switch c.Val() { ... }
//	}
func (c *Cursor) NextBlock(nesting int) bool {
	if c.nesting <= nesting {
		if !c.opensBlock() {
			return false
		}
		c.Next()
	}
	for c.Next() {
		if c.nesting <= nesting {
			return false
		}
		if c.nesting == nesting+1 && !isBrace(c.seg[c.i]) && (c.i == 0 || startsLine(c.seg[c.i-1], c.seg[c.i])) {
			return true
		}
	}
	return false
}

// Nesting returns how many blocks are open at the current token.
func (c *Cursor) Nesting() int { return c.nesting }

// Token returns the current token; the zero Token before the first.
func (c *Cursor) Token() Token {
	if c.i < 0 {
		return Token{}
	}
	return c.seg[c.i]
}

// Val returns the text of the current token.
func (c *Cursor) Val() string { return c.Token().Text }

// RemainingArgs loads the rest of the current line's arguments and returns
// their texts.
func (c *Cursor) RemainingArgs() []string {
	var args []string
	for c.NextArg() {
		args = append(args, c.Val())
	}
	return args
}

// CountRemainingArgs returns how many arguments are left on the current
// line, without moving the cursor.
func (c *Cursor) CountRemainingArgs() int {
	n := 0
	for j := c.i + 1; c.isArg(j); j++ {
		n++
	}
	return n
}

// ArgErr returns an error for a wrong number of arguments on the current
// line: "unexpected argument" at the next argument if there is one, else
// "missing argument" at the current token. Inside a block the message
// starts with the line's first word, as in "dial_timeout: missing argument".
func (c *Cursor) ArgErr() error {
	if c.i >= 0 && c.isArg(c.i+1) {
		next := c.seg[c.i+1]
		return newError(next.Pos(), c.seg.Directive(), nil, fmt.Sprintf("%sunexpected argument %q", c.linePrefix(), next.Text))
	}
	return c.Err(c.linePrefix() + "missing argument")
}

// endOfLine returns an error if arguments or a block follow the cursor on
// its line; for a block it moves the cursor onto the "{".
func (c *Cursor) endOfLine() error {
	switch {
	case c.isArg(c.i + 1):
		return c.ArgErr()
	case c.opensBlock():
		prefix := c.linePrefix()
		c.Next()
		return c.Err(prefix + "unexpected block")
	}
	return nil
}

// opensBlock reports whether a block opens right after the current token,
// on its line.
func (c *Cursor) opensBlock() bool {
	j := c.i + 1
	return c.i >= 0 && j < len(c.seg) && isOpen(c.seg[j]) && !startsLine(c.seg[c.i], c.seg[j])
}

// Errf returns an *Error at the current token naming the directive being
// read. The message is formatted as by fmt.Errorf, and the operand of a
// single %w becomes the error's cause.
func (c *Cursor) Errf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return newError(c.pos(), c.seg.Directive(), errors.Unwrap(err), err.Error())
}

// Wrapf is like Errf, but cause is the error's cause and not part of the
// message, as in c.Wrapf(err, "invalid duration %q", c.Val()).
func (c *Cursor) Wrapf(cause error, format string, args ...any) error {
	return newError(c.pos(), c.seg.Directive(), cause, fmt.Sprintf(format, args...))
}

// Err returns an *Error with the message msg at the current token.
func (c *Cursor) Err(msg string) error {
	return newError(c.pos(), c.seg.Directive(), nil, msg)
}

// isArg reports whether token j is an argument on the line of token j-1.
func (c *Cursor) isArg(j int) bool {
	return j > 0 && j < len(c.seg) && !isBrace(c.seg[j]) && !startsLine(c.seg[j-1], c.seg[j])
}

// linePrefix returns "name: " for the name of the current line inside a
// block, and "" on the directive's own line.
func (c *Cursor) linePrefix() string {
	h := max(c.i, 0)
	for h > 0 && !startsLine(c.seg[h-1], c.seg[h]) {
		h--
	}
	if h == 0 {
		return ""
	}
	return c.seg[h].Text + ": "
}

// pos returns the current token's position; the directive's before the first.
func (c *Cursor) pos() Position {
	if len(c.seg) == 0 {
		return Position{}
	}
	return c.seg[max(c.i, 0)].Pos()
}
