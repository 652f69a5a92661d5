package configs

import (
	"fmt"
	"strings"
)

// Segment is one directive: the tokens of its line and, when the line ends
// with "{", those of its block up to the matching "}".
type Segment []Token

// Directive returns the segment's first word, the directive's name.
func (s Segment) Directive() string {
	if len(s) == 0 {
		return ""
	}
	return s[0].Text
}

// Block is the global options block (no Keys) or a site block: its site
// addresses and its directives.
type Block struct {
	// Keys are the site addresses, one token each: "a.com,b.com" and
	// "a.com, b.com" both give two keys. Columns of split keys are exact
	// for unquoted tokens without placeholders.
	Keys     []Token
	Segments []Segment
}

// ParseBlocks groups tokens into an optional global options block, which
// must come first, and site blocks. A file with a single site may leave out
// the site's braces: then everything after its address line is its body.
//
// A structural error (an unmatched brace, a block without addresses) stops
// parsing; it is an *Error.
func ParseBlocks(tokens []Token) (global *Block, sites []Block, err error) {
	p := &parser{toks: tokens}
	if len(tokens) > 0 && isOpen(tokens[0]) {
		p.i++
		segs, err := p.body(&tokens[0])
		if err != nil {
			return nil, nil, err
		}
		global = &Block{Segments: segs}
	}
	for p.i < len(p.toks) {
		keys, err := p.keys()
		if err != nil {
			return nil, nil, err
		}
		var segs []Segment
		switch last := keys[len(keys)-1]; {
		case p.i < len(p.toks) && isOpen(p.toks[p.i]) && !startsLine(p.toks[p.i-1], p.toks[p.i]):
			open := p.toks[p.i]
			p.i++
			segs, err = p.body(&open)
		case len(sites) == 0:
			segs, err = p.body(nil)
		default:
			err = errAtToken(last, fmt.Sprintf(`expected "{" after site address %q`+
				" (only a file with a single site may leave out the braces)", last.Text))
		}
		if err != nil {
			return nil, nil, err
		}
		sites = append(sites, Block{Keys: keys, Segments: segs})
	}
	return global, sites, nil
}

type parser struct {
	toks []Token
	i    int // next token
}

// keys reads the site addresses on the line at p.i, and on the following
// lines while a line ends with a comma.
func (p *parser) keys() ([]Token, error) {
	first := p.i
	var keys []Token
	more := false // the last key ended with a comma
	for ; p.i < len(p.toks); p.i++ {
		t := p.toks[p.i]
		if isOpen(t) || p.i > first && !more && startsLine(p.toks[p.i-1], t) {
			break
		}
		if isClose(t) {
			return nil, errAtToken(t, `unexpected "}"`)
		}
		keys = appendKeys(keys, t)
		more = strings.HasSuffix(t.Text, ",")
	}
	if len(keys) == 0 {
		t := p.toks[first]
		if isOpen(t) {
			return nil, errAtToken(t, `unexpected "{": site block without address (the global options block must come first)`)
		}
		return nil, errAtToken(t, "missing site address")
	}
	return keys, nil
}

// appendKeys appends the comma-separated addresses of t to keys.
func appendKeys(keys []Token, t Token) []Token {
	text, off := t.Text, 0
	for {
		part, rest, found := strings.Cut(text, ",")
		if part != "" {
			k := t
			k.Text = part
			if !t.Quoted && !t.subst {
				k.Col += off
			}
			keys = append(keys, k)
		}
		if !found {
			return keys
		}
		off += len(part) + 1
		text = rest
	}
}

// body reads directives up to the "}" matching open, or to the end of the
// tokens when open is nil (a site without braces).
func (p *parser) body(open *Token) ([]Segment, error) {
	var segs []Segment
	for {
		if p.i >= len(p.toks) {
			if open != nil {
				return nil, errAtToken(*open, `"{" has no matching "}"`)
			}
			return segs, nil
		}
		if t := p.toks[p.i]; isClose(t) {
			if open == nil {
				return nil, errAtToken(t, `unexpected "}"`)
			}
			p.i++
			return segs, nil
		}
		seg, err := p.segment()
		if err != nil {
			return nil, err
		}
		segs = append(segs, seg)
	}
}

// segment reads one directive: its line and any blocks opened on it.
func (p *parser) segment() (Segment, error) {
	start := p.i
	var open []Token // unclosed "{"
	for ; p.i < len(p.toks); p.i++ {
		t := p.toks[p.i]
		newLine := p.i == start || startsLine(p.toks[p.i-1], t)
		if newLine && p.i > start && len(open) == 0 {
			break
		}
		if isOpen(t) {
			if newLine {
				return nil, errAtToken(t, `unexpected "{" (a block opens at the end of its directive's line)`)
			}
			open = append(open, t)
		}
		if isClose(t) {
			open = open[:len(open)-1] // a "}" at depth 0 ended the segment above
			if len(open) == 0 {
				p.i++
				break
			}
		}
	}
	if len(open) > 0 {
		return nil, errAtToken(open[len(open)-1], `"{" has no matching "}"`)
	}
	return Segment(p.toks[start:p.i:p.i]), nil
}

func errAtToken(t Token, msg string) *Error { return newError(t.Pos(), "", nil, msg) }
