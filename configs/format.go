package configs

import (
	"bytes"
	"strings"
)

// Format lays a Roamfile out canonically, as `roamgate fmt` prints it: one
// directive per line (a ';' becomes a line break), each indented by a tab
// per block it is in, a block's "{" at the end of the line that opens it
// (where it was written there) and its "}" on a line of its own, words one
// space apart, at most one blank line in a row and none just inside a
// block's braces, a blank line after each top-level block, no trailing
// spaces, one newline at the end. Comments are kept, and so is every
// token's text, quotes and placeholders as written: Format never joins
// lines nor splits one except where a directive already ends, so the
// result reads to the same tokens and directives as src, and formatting it
// again changes nothing.
//
// src must lex and have balanced blocks; otherwise Format returns the
// error, with its file, line and column, and nothing else.
func Format(filename string, src []byte) ([]byte, error) {
	// Placeholders are not expanded here: any value does for the check.
	toks, err := Lex(filename, src, func(string) (string, bool) { return "x", true })
	if err != nil {
		return nil, err
	}
	if _, _, err := ParseBlocks(toks); err != nil {
		return nil, err
	}
	f := &formatter{}
	f.scan(bytes.TrimPrefix(src, []byte("\uFEFF")))
	return f.out.Bytes(), nil
}

type formatter struct {
	out   bytes.Buffer
	depth int

	words   []string // the line being built
	lines   int      // lines written
	blank   bool     // the source had a blank line before what comes next
	opened  bool     // the last line written opened a block
	closed0 bool     // the last line written closed a top-level block
}

// scan reads src as the lexer does (see lexer.run), keeping each token's
// raw text.
func (f *formatter) scan(src []byte) {
	newlines := 0
	for off := 0; off < len(src); {
		ch := src[off]
		switch {
		case ch == '\n':
			f.flush()
			newlines++
			if newlines >= 2 {
				f.blank = true
			}
			off++
			continue
		case isSpace(ch):
			off++
			continue
		case ch == ';':
			f.flush()
			off++
		case ch == '#':
			end := off
			for end < len(src) && src[end] != '\n' {
				end++
			}
			comment := strings.TrimRight(string(src[off:end]), " \t\r\v\f")
			if len(f.words) > 0 {
				// After a directive: keep it there, with the spacing
				// written before it (comments are often aligned).
				gap := off
				for gap > 0 && src[gap-1] != '\n' && isSpace(src[gap-1]) {
					gap--
				}
				sp := []byte(string(src[gap:off]))
				for i, c := range sp {
					if c != '\t' {
						sp[i] = ' '
					}
				}
				f.words[len(f.words)-1] += string(sp) + comment
				f.flush()
			} else {
				f.words = []string{comment}
				f.flush()
			}
			off = end
		default:
			end := tokenEnd(src, off)
			f.word(string(src[off:end]))
			off = end
		}
		newlines = 0
	}
	f.flush()
}

// tokenEnd is where the token starting at off ends: after its closing quote
// for a quoted one (an unterminated one was refused by Lex), else at
// whitespace or ';'.
func tokenEnd(src []byte, off int) int {
	switch q := src[off]; q {
	case '"', '`':
		for i := off + 1; i < len(src); i++ {
			switch {
			case q == '"' && src[i] == '\\' && i+1 < len(src) && (src[i+1] == '"' || src[i+1] == '\\'):
				i++
			case src[i] == q:
				return i + 1
			}
		}
		return len(src)
	}
	i := off
	for i < len(src) && !isSpace(src[i]) && src[i] != ';' {
		i++
	}
	return i
}

// word adds a token to the line; braces open and close blocks.
func (f *formatter) word(w string) {
	switch w {
	case "{":
		f.words = append(f.words, w)
		f.flush()
		f.depth++
		f.opened = true
	case "}":
		f.flush()
		f.depth = max(f.depth-1, 0)
		f.blank = false // none just inside the closing brace
		f.words = []string{w}
		f.flush()
		f.closed0 = f.depth == 0
	default:
		f.words = append(f.words, w)
	}
}

// flush writes the line being built, if any.
func (f *formatter) flush() {
	if len(f.words) == 0 {
		return
	}
	if f.lines > 0 && (f.closed0 || (f.blank && !f.opened)) {
		f.out.WriteByte('\n')
	}
	f.out.WriteString(strings.Repeat("\t", f.depth))
	f.out.WriteString(strings.Join(f.words, " "))
	f.out.WriteByte('\n')
	f.words = f.words[:0]
	f.lines++
	f.blank, f.opened, f.closed0 = false, false, false
}
