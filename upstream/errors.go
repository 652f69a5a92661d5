package upstream

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/net/http/httpguts"
)

// ErrLeaseClosed is returned for requests on a lease whose session ended.
var ErrLeaseClosed = errors.New("upstream lease closed")

// ErrResponseHeaderTimeout is returned when a backend sent no response header
// within Config.ResponseHeaderTimeout.
var ErrResponseHeaderTimeout = errors.New("timeout awaiting response header")

// DialError is a failure to connect to a backend. No byte of the request
// reached it, so the request may be sent elsewhere.
type DialError struct {
	Backend string // the backend's address
	Err     error

	b *Backend
}

func (e *DialError) Error() string { return "dial upstream " + e.Backend + ": " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// Timeout reports whether the dial timed out.
func (e *DialError) Timeout() bool {
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}

// ErrMalformedRequest marks a request that cannot go upstream as HTTP/1.1:
// its method, target or Host, a header or trailer field, or its body's
// length is not what HTTP/1.1 can carry. It is the client's error (400):
// the proxy checks the request before the lease sees it, and the lease's
// own checks are the last guard.
var ErrMalformedRequest = errors.New("malformed request")

// CheckRequestLine reports, as an ErrMalformedRequest, a method that is
// not a token, a request target that is empty or holds whitespace or
// control bytes, or a Host that is not a valid host[:port]: anything that
// would let a request line or Host line carry a second request.
func CheckRequestLine(method, target, host string) error {
	switch {
	case !httpguts.ValidHeaderFieldName(method): // a token, as a field name is
		return fmt.Errorf("%w: method %q", ErrMalformedRequest, method)
	case !validRequestTarget(target):
		return fmt.Errorf("%w: request target %q", ErrMalformedRequest, target)
	case !httpguts.ValidHostHeader(host):
		return fmt.Errorf("%w: host %q", ErrMalformedRequest, host)
	}
	return nil
}

// ErrNoHealthyBackend is returned for a request when no backend of the pool
// is healthy (and none became healthy within Config.TryDuration). The proxy
// answers 503.
var ErrNoHealthyBackend = errors.New("no healthy upstream backend")

// ErrMalformedResponse marks a backend's response the proxy cannot pass on:
// a header or trailer field whose name is not a token or whose value holds
// CR, LF or NUL (HTTP/3 and HTTP/2 clients refuse such a response whole,
// and an HTTP/1.1 one could read a second response out of it). The
// connection is closed; the client gets a 502, or a reset stream when the
// header was already sent.
var ErrMalformedResponse = errors.New("malformed response")

// CheckFields reports, as an ErrMalformedResponse naming the section
// ("header", "trailer"), the first field of h that HTTP cannot carry.
func CheckFields(section string, h map[string][]string) error {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("%w: invalid %s field name %q", ErrMalformedResponse, section, k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("%w: invalid value in %s field %s", ErrMalformedResponse, section, k)
			}
		}
	}
	return nil
}
