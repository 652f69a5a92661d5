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

// ErrNoHealthyBackend is returned for a request when no backend of the pool
// is healthy (and none became healthy within Config.TryDuration). The proxy
// answers 503.
var ErrNoHealthyBackend = errors.New("no healthy upstream backend")
