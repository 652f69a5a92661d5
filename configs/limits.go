package configs

import "fmt"

// Limits bounds the request heads a site accepts. Sizes are counted as the
// head would go to the backend over HTTP/1.1, whatever protocol the client
// speaks: legacy backends refuse or mis-parse large heads (nginx takes a
// request line or field of at most 8 KiB and 32 KiB in all by default,
// Apache 8,190 bytes per field, IIS 16 KiB in all), so the defaults keep
// what reaches them within nginx's.
type Limits struct {
	// HeaderBytes bounds the whole request head: the request line, Host
	// and every field line, each with its CRLF. Larger gets 431. Global
	// max_header_bytes, or the site's; default DefaultMaxHeaderBytes.
	HeaderBytes int
	// FieldBytes bounds one field line ("Name: value") and the request
	// line. A larger field gets 431, a larger request line 414. Global
	// max_header_field_bytes, or the site's; default
	// DefaultMaxHeaderFieldBytes.
	FieldBytes int
}

// Bounds of max_header_bytes and max_header_field_bytes.
const (
	minHeaderBytes = 1 << 10
	maxHeaderLimit = 64 << 20
)

// headerSize reads the SIZE of "max_header_bytes SIZE" or
// "max_header_field_bytes SIZE".
func headerSize(c *Cursor) (int, Position, error) {
	t, err := oneArg(c)
	if err != nil {
		return 0, Position{}, err
	}
	n, ok := parseSize(t.Text)
	switch {
	case !ok:
		return 0, Position{}, c.Errf("invalid size %q (want a number of bytes or a size such as 8KiB or 64KiB)", t.Text)
	case n < minHeaderBytes || n > maxHeaderLimit:
		return 0, Position{}, c.Errf("size %q out of range (want 1KiB-64MiB)", t.Text)
	}
	return int(n), t.Pos(), nil
}

// globalHeaderSize reads a global header limit into *dst.
func globalHeaderSize(dst func(*Config) *int) func(b *builder, c *Cursor) error {
	return func(b *builder, c *Cursor) error {
		n, pos, err := headerSize(c)
		if err != nil {
			return err
		}
		*dst(b.cfg) = n
		b.limitPos[c.seg.Directive()] = pos
		return nil
	}
}

// siteHeaderSize reads a site's own header limit into its Limits.
func siteHeaderSize(dst func(*Limits) *int) func(b *builder, c *Cursor, sc *scope) error {
	return func(b *builder, c *Cursor, sc *scope) error {
		n, pos, err := headerSize(c)
		if err != nil {
			return err
		}
		*dst(&sc.site.Limits) = n
		sc.limitPos[c.seg.Directive()] = pos
		return nil
	}
}

// checkLimits reports limits whose field bound exceeds the head bound, at
// the later of the two where they were written (where holds the positions
// of those written; none written means the defaults, which agree).
func (b *builder) checkLimits(l Limits, where map[string]Position) {
	if l.FieldBytes <= l.HeaderBytes {
		return
	}
	name, pos := "max_header_field_bytes", where["max_header_field_bytes"]
	if p, ok := where["max_header_bytes"]; ok && (pos.Line == 0 || p.Line > pos.Line) {
		name, pos = "max_header_bytes", p
	}
	b.report(newError(pos, name, nil, fmt.Sprintf("max_header_field_bytes %d is above max_header_bytes %d (one field must fit in the head)", l.FieldBytes, l.HeaderBytes)))
}
