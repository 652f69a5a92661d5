package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"sync"
	"time"
)

// Tickets seals TLS session tickets with keys derived from a shared
// secret, one per rotation period (see TicketKeys), through tls.Config's
// WrapSession and UnwrapSession: function fields, so every clone of a
// config (net/http's ServeTLS, quic-go's, a handshake's GetConfigForClient
// copy) seals with the current key, without a goroutine to rotate them.
//
// A ticket is the period it was sealed in (8 bytes, big endian), a random
// 12-byte nonce, and the session state sealed with AES-256-GCM under that
// period's key, the period as additional data. A ticket of a period
// outside the accepted window, or one that does not open, is no ticket:
// the client gets a full handshake.
type Tickets struct {
	secret   []byte
	rotation time.Duration
	now      func() time.Time

	mu    sync.Mutex
	aeads map[int64]cipher.AEAD // by period, the accepted window's
}

// NewTickets returns the ticket sealer of secret with keys rotated every
// rotation.
func NewTickets(secret []byte, rotation time.Duration) *Tickets {
	return &Tickets{secret: secret, rotation: rotation, now: time.Now, aeads: map[int64]cipher.AEAD{}}
}

// Install makes c seal and open its session tickets with t.
func (t *Tickets) Install(c *tls.Config) {
	c.WrapSession = t.wrap
	c.UnwrapSession = t.unwrap
}

const ticketHeader = 8 + 12

func (t *Tickets) wrap(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
	state, err := ss.Bytes()
	if err != nil {
		return nil, err
	}
	p := t.period(t.now())
	aead, err := t.aead(p)
	if err != nil {
		return nil, err
	}
	out := make([]byte, ticketHeader, ticketHeader+len(state)+aead.Overhead())
	binary.BigEndian.PutUint64(out, uint64(p))
	if _, err := rand.Read(out[8:ticketHeader]); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[8:ticketHeader], state, out[:8]), nil
}

func (t *Tickets) unwrap(identity []byte, _ tls.ConnectionState) (*tls.SessionState, error) {
	if len(identity) < ticketHeader {
		return nil, nil
	}
	p := int64(binary.BigEndian.Uint64(identity))
	if now := t.period(t.now()); p < now-2 || p > now+1 {
		return nil, nil // expired, or from a clock far ahead
	}
	aead, err := t.aead(p)
	if err != nil {
		return nil, nil
	}
	state, err := aead.Open(nil, identity[8:ticketHeader], identity[ticketHeader:], identity[:8])
	if err != nil {
		return nil, nil // another secret's, or tampered with
	}
	ss, err := tls.ParseSessionState(state)
	if err != nil {
		return nil, nil
	}
	return ss, nil
}

func (t *Tickets) period(now time.Time) int64 { return now.UnixNano() / int64(t.rotation) }

// aead returns the cipher of period p, kept for the accepted window.
func (t *Tickets) aead(p int64) (cipher.AEAD, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a := t.aeads[p]; a != nil {
		return a, nil
	}
	block, err := aes.NewCipher(t.key(p))
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	for q := range t.aeads {
		if q < p-3 || q > p+3 {
			delete(t.aeads, q)
		}
	}
	if len(t.aeads) > 16 {
		return nil, errors.New("keys: too many ticket periods")
	}
	t.aeads[p] = a
	return a, nil
}

func (t *Tickets) key(p int64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(p))
	return derive(t.secret, ticketLabel+string(b[:]), 32)
}
