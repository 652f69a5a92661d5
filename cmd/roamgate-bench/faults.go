package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/impair"
)

// The storm under path faults (--faults): its clients reach each HTTP/3
// target through impair, a userspace UDP relay that loses, delays and
// reorders packets both ways (it stands in for netem, which these machines
// lack), and every response body is checked against the hash of its
// request's id, so a response that went to the wrong request, got mixed
// with another's or was cut short shows.

// faultTimeout is the least timeout of a request, a handshake and a
// migration in a faulted storm. Each time the same packet is lost again
// its sender waits twice as long before the next try (RFC 9002 §6.2.1), so
// under a few per cent of loss an unlucky request takes several seconds;
// the storm waits for it rather than count an error the path did not make.
const faultTimeout = 30 * time.Second

// faultMigrationTail is how long a client of a faulted storm goes on
// sending requests after its migration, past the end of the measured run
// if it must. roamgate notices a path change at a request's start or end,
// once quic-go has switched to the new path, and quic-go switches only
// once its own PATH_CHALLENGE to the new address was answered (RFC 9000
// §8.2); when the challenge or its answer is lost, quic-go tries again on
// the next packet from the client after 100 ms, then 200 ms, 400 ms, ...
// Without the tail a client migrating near the end of a short run may send
// its last request before roamgate's side has switched, and the migration
// goes unseen (roamgate reports it at the session's next request, which
// never comes). Two seconds cover five lost tries; in a run of --duration
// 20s the last client migrates at 18s, so the tail adds nothing.
const faultMigrationTail = 2 * time.Second

// faultSettings are the faults of the storm's path, for the report.
type faultSettings struct {
	Loss     float64 `json:"loss"` // each way
	DelayMS  float64 `json:"delay_ms"`
	JitterMS float64 `json:"jitter_ms"`
}

func settingsOf(f *impair.Faults) *faultSettings {
	if f == nil {
		return nil
	}
	return &faultSettings{Loss: f.Loss, DelayMS: ms(f.Delay), JitterMS: ms(f.Jitter)}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// String is the faults in words: "5 % loss each way, 0s delay, up to 50ms
// jitter".
func (f *faultSettings) String() string {
	loss := strconv.FormatFloat(math.Round(f.Loss*1e4)/100, 'f', -1, 64)
	delay := time.Duration(f.DelayMS * float64(time.Millisecond)).Round(time.Microsecond)
	jitter := time.Duration(f.JitterMS * float64(time.Millisecond)).Round(time.Microsecond)
	return fmt.Sprintf("%s %% loss each way, %v delay, up to %v jitter", loss, delay, jitter)
}

// startFaultRelay starts the impaired path of one faulted run: a relay to
// t's UDP address with the faults f. The caller heals it (see heal) before
// its clients close, and closes it once t has closed their connections.
func startFaultRelay(t *target, f impair.Faults) (*impair.Relay, error) {
	addr, err := netip.ParseAddrPort(t.addr)
	if err != nil {
		return nil, fmt.Errorf("fault relay to %s: %w", t.addr, err)
	}
	rl, err := impair.New(addr, f)
	if err != nil {
		return nil, fmt.Errorf("fault relay to %s: %w", t.addr, err)
	}
	return rl, nil
}

// heal lifts the relay's faults, so the clients' CONNECTION_CLOSE frames
// get through and the servers close their connections at once rather than
// at their idle timeout.
func heal(rl *impair.Relay) {
	_ = rl.SetFaults(impair.Faults{}) // the zero Faults are in range
}

// newIDPrefix is the prefix of one run's request ids, so that ids differ
// from run to run.
func newIDPrefix() string { return strconv.FormatUint(rand.Uint64(), 36) }

// hashedBody appends to dst the body GET /body?id=ID answers: size bytes
// of the SHA-256 chain of the id (SHA-256 of the id, SHA-256 of that, and
// so on), which no other id gives.
func hashedBody(dst []byte, id string, size int64) []byte {
	sum := sha256.Sum256([]byte(id))
	for left := size; left > 0; left -= int64(len(sum)) {
		dst = append(dst, sum[:min(left, int64(len(sum)))]...)
		sum = sha256.Sum256(sum[:])
	}
	return dst
}

// bodyError is a response body that is not hashedBody of its request's
// id: one with bytes that are not its own (another request's, or mixed),
// or one cut short.
type bodyError struct {
	ID       string
	Got      int64
	Want     int64
	Mismatch bool  // a byte differs, or the body is too long
	At       int64 // with Mismatch: the first byte that differs (Want when the body is too long)
	Err      error // what cut the body short, if anything
}

func (e *bodyError) Error() string {
	if e.Mismatch {
		return fmt.Sprintf("body of request %s not its own: %d bytes for %d, first wrong at byte %d", e.ID, e.Got, e.Want, e.At)
	}
	if e.Err != nil {
		return fmt.Sprintf("body of request %s cut at %d of %d bytes: %v", e.ID, e.Got, e.Want, e.Err)
	}
	return fmt.Sprintf("body of request %s cut at %d of %d bytes", e.ID, e.Got, e.Want)
}

func (e *bodyError) Unwrap() error { return e.Err }

// verifyBody checks a response body read for request id against
// hashedBody(id, size). readErr is the error that ended the read, if any.
// A body with a byte that is not its own is a mismatch even when its read
// failed too; a body that is its own but short is truncated; a whole body
// whose read failed after its last byte is a plain read error.
func verifyBody(id string, size int64, got []byte, readErr error) error {
	want := hashedBody(make([]byte, 0, size), id, size)
	n := min(len(got), len(want))
	at := int64(-1)
	for i := range n {
		if got[i] != want[i] {
			at = int64(i)
			break
		}
	}
	switch {
	case at >= 0:
		return &bodyError{ID: id, Got: int64(len(got)), Want: size, Mismatch: true, At: at}
	case len(got) > len(want):
		return &bodyError{ID: id, Got: int64(len(got)), Want: size, Mismatch: true, At: size}
	case len(got) < len(want):
		return &bodyError{ID: id, Got: int64(len(got)), Want: size, Err: readErr}
	case readErr != nil:
		return fmt.Errorf("read response: %w", readErr)
	}
	return nil
}

// isMismatch reports whether err is a body that was not its request's.
func isMismatch(err error) bool {
	var be *bodyError
	return errors.As(err, &be) && be.Mismatch
}

// isTruncated reports whether err is a body cut short.
func isTruncated(err error) bool {
	var be *bodyError
	return errors.As(err, &be) && !be.Mismatch
}
