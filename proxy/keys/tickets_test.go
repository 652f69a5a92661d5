package keys

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

// instance is a TLS server on loopback whose session tickets a Tickets
// seals, on a clock of the test's.
type instance struct {
	addr    string
	tickets *Tickets
	clock   atomic.Int64 // unix nanoseconds
}

func startInstance(t *testing.T, cert *edgetest.Cert, secret []byte, rotation time.Duration, at time.Time) *instance {
	t.Helper()
	in := &instance{tickets: NewTickets(secret, rotation)}
	in.clock.Store(at.UnixNano())
	in.tickets.now = func() time.Time { return time.Unix(0, in.clock.Load()) }
	conf := &tls.Config{Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS13}
	in.tickets.Install(conf)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	in.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// One byte after the handshake: the client has the session
			// ticket, which TLS 1.3 sends after the handshake, once it
			// reads it.
			c.Write([]byte{1})
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return in
}

func (in *instance) set(at time.Time) { in.clock.Store(at.UnixNano()) }

// connect does a handshake with in and reads its byte; it reports whether
// the session was resumed.
func connect(t *testing.T, in *instance, conf *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", in.addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

// TestTicketsAcrossInstances: a ticket one instance sealed resumes at
// another with the same secret, in its period and the two after it, and
// at an instance whose clock is a period behind; not three periods on,
// and never at an instance with another secret.
func TestTicketsAcrossInstances(t *testing.T) {
	const rotation = 6 * time.Hour
	cert := edgetest.NewCert(t, "localhost")
	secret := bytes.Repeat([]byte{7}, 32)
	start := time.Unix(0, 0).Add(1000 * rotation) // the beginning of a period
	a := startInstance(t, cert, secret, rotation, start)
	b := startInstance(t, cert, secret, rotation, start)
	stranger := startInstance(t, cert, bytes.Repeat([]byte{8}, 32), rotation, start)

	for _, tc := range []struct {
		name string
		to   *instance
		at   time.Time // the other instance's clock
		want bool
	}{
		{"same period", b, start.Add(rotation - time.Second), true},
		{"one period on", b, start.Add(rotation), true},
		{"two periods on", b, start.Add(3*rotation - time.Second), true},
		{"three periods on", b, start.Add(3 * rotation), false},
		{"a clock one period behind", b, start.Add(-time.Second), true},
		{"a clock two periods behind", b, start.Add(-rotation - time.Second), false},
		{"another secret", stranger, start, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := &tls.Config{RootCAs: cert.Pool, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			a.set(start)
			if connect(t, a, conf) {
				t.Fatal("the first handshake resumed")
			}
			tc.to.set(tc.at)
			if got := connect(t, tc.to, conf); got != tc.want {
				t.Fatalf("resumed: %v, want %v", got, tc.want)
			}
		})
	}
}

// TestTicketFormat: a ticket carries the period it was sealed in; one
// changed in any byte, cut short, or moved to another period opens to
// nothing (a full handshake), never to an error.
func TestTicketFormat(t *testing.T) {
	const rotation = time.Hour
	at := time.Unix(0, 0).Add(500 * rotation)
	tk := NewTickets(bytes.Repeat([]byte{3}, 32), rotation)
	tk.now = func() time.Time { return at }
	cert := edgetest.NewCert(t, "localhost")
	state := sessionState(t, cert)
	ticket, err := tk.wrap(tls.ConnectionState{}, state)
	if err != nil {
		t.Fatal(err)
	}
	if p := int64(binary.BigEndian.Uint64(ticket)); p != 500 {
		t.Fatalf("sealed in period %d, want 500", p)
	}
	if ss, err := tk.unwrap(ticket, tls.ConnectionState{}); err != nil || ss == nil {
		t.Fatalf("the ticket does not open: %v %v", ss, err)
	}
	again, _ := tk.wrap(tls.ConnectionState{}, state)
	if bytes.Equal(again, ticket) {
		t.Fatal("two tickets of one state are equal (nonce reused)")
	}
	for i := range ticket {
		bad := bytes.Clone(ticket)
		bad[i] ^= 0x40
		if ss, err := tk.unwrap(bad, tls.ConnectionState{}); err != nil || ss != nil {
			t.Fatalf("byte %d changed: opened to %v, %v", i, ss, err)
		}
	}
	for _, n := range []int{0, 7, ticketHeader, len(ticket) - 1} {
		if ss, err := tk.unwrap(ticket[:n], tls.ConnectionState{}); err != nil || ss != nil {
			t.Fatalf("cut to %d bytes: opened to %v, %v", n, ss, err)
		}
	}
}

// sessionState is a real TLS 1.3 session's state, as a server seals it.
func sessionState(t *testing.T, cert *edgetest.Cert) *tls.SessionState {
	t.Helper()
	got := make(chan *tls.SessionState, 1)
	conf := &tls.Config{Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS13,
		WrapSession: func(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
			select {
			case got <- ss:
			default:
			}
			return []byte("ticket"), nil
		}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte{1})
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: cert.Pool, ServerName: "localhost",
		ClientSessionCache: tls.NewLRUClientSessionCache(1)})
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	c.Read(b[:])
	c.Close()
	select {
	case ss := <-got:
		return ss
	case <-time.After(5 * time.Second):
		t.Fatal("no session state")
		return nil
	}
}

// TestDeriveAgreesAcrossInstances: instances with one secret agree on the
// token and cookie keys whatever their server IDs; their reset keys differ
// by server ID and exist only with one.
func TestDeriveAgreesAcrossInstances(t *testing.T) {
	secret := bytes.Repeat([]byte{9}, 32)
	a, b := Derive(secret, []byte{1}), Derive(secret, []byte{2})
	if a.Token != b.Token || !bytes.Equal(a.Cookie, b.Cookie) {
		t.Fatal("instances of one secret disagree on the token or cookie key")
	}
	if a.Reset == nil || b.Reset == nil || *a.Reset == *b.Reset {
		t.Fatal("reset keys must exist per server ID and differ between them")
	}
	if again := Derive(secret, []byte{1}); *again.Reset != *a.Reset {
		t.Fatal("a successor with the same server ID derives another reset key")
	}
	if none := Derive(secret, nil); none.Reset != nil {
		t.Fatal("a reset key without a server ID")
	}
	other := Derive(bytes.Repeat([]byte{8}, 32), []byte{1})
	if other.Token == a.Token || bytes.Equal(other.Cookie, a.Cookie) || *other.Reset == *a.Reset {
		t.Fatal("another secret derives the same keys")
	}
	if bytes.Equal(a.Cookie, a.Token[:len(a.Cookie)]) {
		t.Fatal("the cookie and token keys are the same bytes")
	}
}
