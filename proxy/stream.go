package proxy

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// errClientWrite marks a failed write to the client.
var errClientWrite = errors.New("write to client")

// bufferedReader is implemented by upstream response bodies: how much can be
// read without waiting on the network.
type bufferedReader interface{ Buffered() int }

// flushSlack is how many buffered bytes still count as "nothing buffered":
// chunked framing of a next chunk may sit in the buffer before its data.
const flushSlack = 8

// Response bodies are copied through pooled buffers: a small one for a body
// known to fit it (most API and page responses), so a busy proxy with many
// requests in flight does not hold a large buffer for each, and a large one
// for the rest, so a big download moves in few, large writes.
const (
	smallCopySize = 4 << 10
	largeCopySize = 64 << 10
)

var (
	smallCopyPool = sync.Pool{New: func() any { b := make([]byte, smallCopySize); return &b }}
	largeCopyPool = sync.Pool{New: func() any { b := make([]byte, largeCopySize); return &b }}
)

// copyBuffer returns a buffer for a body of length n (-1: unknown) and the
// pool it goes back to.
func copyBuffer(n int64) (*[]byte, *sync.Pool) {
	pool := &largeCopyPool
	if n >= 0 && n <= smallCopySize {
		pool = &smallCopyPool
	}
	return pool.Get().(*[]byte), pool
}

// copyBody streams a response body to the client as it arrives. It flushes
// whenever the upstream has nothing more buffered, so a burst goes out in as
// few packets as possible and a trickle (server-sent events, long polling)
// goes out event by event. A body of known length is not flushed after its
// last byte: the end of the handler sends it with the end of the stream.
func copyBody(w http.ResponseWriter, resp *http.Response) (int64, error) {
	bufp, pool := copyBuffer(resp.ContentLength)
	defer pool.Put(bufp)
	buf := *bufp
	flusher, _ := w.(http.Flusher)
	br, _ := resp.Body.(bufferedReader)
	var written int64
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return written, errors.Join(errClientWrite, werr)
			}
			written += int64(n)
			complete := resp.ContentLength >= 0 && written >= resp.ContentLength
			if flusher != nil && !complete && (br == nil || br.Buffered() <= flushSlack) {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// announceTrailers declares the backend's trailer fields before the header
// goes out, so both net/http and http3 send them after the body.
func announceTrailers(hdr http.Header, trailer http.Header) {
	keys := make([]string, 0, len(trailer))
	for k := range trailer {
		keys = append(keys, k)
	}
	hdr["Trailer"] = []string{strings.Join(keys, ", ")}
}
