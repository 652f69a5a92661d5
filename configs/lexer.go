package configs

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// Token is one word of a Roamfile with the place it was read from.
type Token struct {
	File      string
	Line, Col int // 1-based; Col in bytes
	// Text is the word with quotes removed, escapes resolved and {$ENV}
	// placeholders substituted.
	Text string
	// Quoted is set for a "double-quoted" or `backquoted` token. A quoted
	// "{" or "}" is text, never a brace.
	Quoted bool

	// Set by Lex; zero in tokens made by hand, which then break lines by
	// line number alone.
	semi  bool // a ';' separates the token from the one before it
	lines int  // newlines inside the token's source text
	subst bool // Text has {$ENV} substitutions, so "{" or "}" is not a brace
}

// Pos returns where the token starts.
func (t Token) Pos() Position { return Position{File: t.File, Line: t.Line, Col: t.Col} }

// isOpen reports whether t is a "{" that opens a block.
func isOpen(t Token) bool { return t.Text == "{" && !t.Quoted && !t.subst }

// isClose reports whether t is a "}" that closes a block.
func isClose(t Token) bool { return t.Text == "}" && !t.Quoted && !t.subst }

func isBrace(t Token) bool { return isOpen(t) || isClose(t) }

// startsLine reports whether t, which follows prev, begins a new directive
// line: after a newline or a ';', after a brace, or at a closing brace.
func startsLine(prev, t Token) bool {
	return t.semi || isBrace(prev) || isClose(t) ||
		t.File != prev.File || t.Line > prev.Line+prev.lines
}

// Lex splits src into tokens. filename is recorded in every token. env looks
// up the variables of {$NAME} and {$NAME:default} placeholders; nil means
// os.LookupEnv. A default applies only when the variable is unset. A value
// is never split into several tokens nor read as a brace, and an unquoted
// token that substitutes to nothing is dropped.
//
// Lex stops at the first error, an *Error at the place it is about.
func Lex(filename string, src []byte, env func(string) (string, bool)) ([]Token, error) {
	if env == nil {
		env = os.LookupEnv
	}
	l := &lexer{
		file: filename,
		src:  bytes.TrimPrefix(src, []byte("\uFEFF")),
		env:  env,
		line: 1,
		col:  1,
	}
	return l.run()
}

type lexer struct {
	file string
	src  []byte
	env  func(string) (string, bool)

	off, line, col int
	semi           bool   // a ';' was read since the last token
	subst          bool   // the current token has a placeholder
	buf            []byte // text of the current token
}

func (l *lexer) run() ([]Token, error) {
	var toks []Token
	for l.off < len(l.src) {
		switch ch := l.src[l.off]; {
		case ch == ';':
			l.semi = true
			l.advance()
		case isSpace(ch):
			l.advance()
		case ch == '#':
			for l.off < len(l.src) && l.src[l.off] != '\n' {
				l.advance()
			}
		default:
			t, err := l.token()
			if err != nil {
				return nil, err
			}
			if t.Text == "" && t.subst && !t.Quoted {
				continue
			}
			t.semi, l.semi = l.semi, false
			toks = append(toks, t)
		}
	}
	return toks, nil
}

// token reads the token that starts at l.off.
func (l *lexer) token() (Token, error) {
	t := Token{File: l.file, Line: l.line, Col: l.col}
	l.buf, l.subst = l.buf[:0], false
	var err error
	switch l.src[l.off] {
	case '"':
		t.Quoted = true
		err = l.quoted('"', true)
	case '`':
		t.Quoted = true
		err = l.quoted('`', false)
	default:
		err = l.bare()
	}
	t.Text, t.subst, t.lines = string(l.buf), l.subst, l.line-t.Line
	return t, err
}

// bare reads an unquoted word, which ends at whitespace or ';'.
func (l *lexer) bare() error {
	for l.off < len(l.src) {
		ch := l.src[l.off]
		if isSpace(ch) || ch == ';' {
			break
		}
		if ch == '{' && l.peek(1) == '$' {
			if err := l.placeholder(func(c byte) bool { return isSpace(c) || c == ';' }); err != nil {
				return err
			}
			continue
		}
		l.buf = append(l.buf, ch)
		l.advance()
	}
	return nil
}

// quoted reads a string between two q, which may span lines. With escapes,
// \q and \\ stand for q and \; any other backslash is kept.
func (l *lexer) quoted(q byte, escapes bool) error {
	start := l.pos()
	l.advance()
	for l.off < len(l.src) {
		ch := l.src[l.off]
		switch {
		case ch == q:
			l.advance()
			return nil
		case escapes && ch == '\\' && (l.peek(1) == q || l.peek(1) == '\\'):
			l.buf = append(l.buf, l.peek(1))
			l.advance()
			l.advance()
		case ch == '{' && l.peek(1) == '$':
			if err := l.placeholder(func(c byte) bool { return c == q }); err != nil {
				return err
			}
		default:
			l.buf = append(l.buf, ch)
			l.advance()
		}
	}
	return newError(start, "", nil, "unterminated quoted string")
}

// placeholder substitutes the {$NAME} or {$NAME:default} at l.off. It must
// close on the same line and before a byte for which stop is true. An unset
// NAME without a default is an error at the placeholder.
func (l *lexer) placeholder(stop func(byte) bool) error {
	start := l.pos()
	end := -1
	for j := l.off + 2; j < len(l.src) && l.src[j] != '\n' && !stop(l.src[j]); j++ {
		if l.src[j] == '}' {
			end = j
			break
		}
	}
	if end < 0 {
		return newError(start, "", nil, `unterminated "{$" placeholder (want {$NAME} or {$NAME:default})`)
	}
	name, def, _ := strings.Cut(string(l.src[l.off+2:end]), ":")
	if name == "" {
		return newError(start, "", nil, `empty variable name in "{$...}" placeholder`)
	}
	val, ok := l.env(name)
	if !ok {
		if !strings.Contains(string(l.src[l.off+2:end]), ":") {
			// Substituting nothing would surface later as a missing
			// argument or a wrong value, far from its cause.
			return newError(start, "", nil, fmt.Sprintf("{$%s} is not set: set %s, or give a default: {$%s:VALUE} ({$%s:} for empty)", name, name, name, name))
		}
		val = def
	}
	l.buf = append(l.buf, val...)
	l.subst = true
	l.col += end + 1 - l.off // the placeholder has no newline
	l.off = end + 1
	return nil
}

func (l *lexer) advance() {
	if l.src[l.off] == '\n' {
		l.line++
		l.col = 1
	} else {
		l.col++
	}
	l.off++
}

func (l *lexer) peek(n int) byte {
	if l.off+n < len(l.src) {
		return l.src[l.off+n]
	}
	return 0
}

func (l *lexer) pos() Position { return Position{File: l.file, Line: l.line, Col: l.col} }

func isSpace(ch byte) bool {
	switch ch {
	case ' ', '\t', '\n', '\r', '\v', '\f':
		return true
	}
	return false
}
