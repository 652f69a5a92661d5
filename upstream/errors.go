package upstream

import (
	"errors"
	"net"
)

// ErrLeaseClosed is returned for requests on a lease whose session ended.
var ErrLeaseClosed = errors.New("upstream lease closed")

// ErrResponseHeaderTimeout is returned when a backend sent no response header
// within Config.ResponseHeaderTimeout.
var ErrResponseHeaderTimeout = errors.New("timeout awaiting response header")

// DialError is a failure to connect to a backend. No byte of the request
// reached it, so the request may be sent elsewhere.
type DialError struct {
	Backend string
	Err     error
}

func (e *DialError) Error() string { return "dial upstream " + e.Backend + ": " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// Timeout reports whether the dial timed out.
func (e *DialError) Timeout() bool {
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}
