package upstream

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// errInvalidHeader guards the wire against a header the proxy should have
// rejected already: a name or value that could split the request.
var errInvalidHeader = fmt.Errorf("%w: invalid header field", ErrMalformedRequest)

// keysPool holds the scratch slices used to write header keys in order.
var keysPool = sync.Pool{New: func() any { s := make([]string, 0, 32); return &s }}

// writeRequestHeader writes req's request line and header in HTTP/1.1 form.
// The framing headers (Host, Content-Length, Transfer-Encoding, Trailer) come
// from req's fields, never from req.Header. Keys are written in sorted order
// so the bytes on the wire are deterministic.
func writeRequestHeader(w *bufio.Writer, req *http.Request, hasBody, chunked bool) error {
	uri := req.RequestURI
	if uri == "" {
		uri = req.URL.RequestURI()
	}
	if err := CheckRequestLine(req.Method, uri, req.Host); err != nil {
		return err
	}
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.Host)
	w.WriteString("\r\n")

	if err := writeHeaderFields(w, req.Header, true); err != nil {
		return err
	}
	switch {
	case chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			w.WriteString("Trailer: ")
			i := 0
			for k := range req.Trailer {
				if i > 0 {
					w.WriteString(", ")
				}
				w.WriteString(k)
				i++
			}
			w.WriteString("\r\n")
		}
	case hasBody:
		w.WriteString("Content-Length: ")
		var b [20]byte
		w.Write(strconv.AppendInt(b[:0], req.ContentLength, 10))
		w.WriteString("\r\n")
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		// RFC 9110 §8.6: a request whose method defines a body says it is empty.
		w.WriteString("Content-Length: 0\r\n")
	}
	_, err := w.WriteString("\r\n")
	return err
}

// writeHeaderFields writes h sorted by key, skipping framing fields when
// request is set.
func writeHeaderFields(w *bufio.Writer, h http.Header, request bool) error {
	kp := keysPool.Get().(*[]string)
	keys := (*kp)[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	defer func() { *kp = keys[:0]; keysPool.Put(kp) }()
	for _, k := range keys {
		if request {
			switch k {
			case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
				continue
			}
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return errInvalidHeader
		}
		for _, v := range h[k] {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errInvalidHeader
			}
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	return nil
}

// writeTrailer ends a chunked body with its trailer section.
func writeTrailer(w *bufio.Writer, trailer http.Header) error {
	if err := writeHeaderFields(w, trailer, false); err != nil {
		return err
	}
	_, err := w.WriteString("\r\n")
	return err
}

// newChunkedWriter writes the chunked transfer coding; its Close writes the
// last chunk but not the trailer section.
func newChunkedWriter(w io.Writer) io.WriteCloser { return httputil.NewChunkedWriter(w) }

// validRequestTarget reports whether uri can go on a request line: non-empty,
// no whitespace or control bytes.
func validRequestTarget(uri string) bool {
	if uri == "" {
		return false
	}
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}
