package h3client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// reservedStreamType is the type of the unidirectional streams Ping and
// Migrate open: 0x1f*N+0x21 with N=0, a type RFC 9114 §6.2.3 reserves so
// that receivers practise ignoring unknown types. The edge must discard it
// or stop reading it (§6.2); quic-go's HTTP/3 server stops reading at once
// with H3_STREAM_CREATION_ERROR, i.e. it answers with STOP_SENDING.
const reservedStreamType = 0x21

// confirmTimeout bounds each wait for the edge's STOP_SENDING after a switch.
const confirmTimeout = time.Second

// Migrate moves the connection to a new UDP socket on the local IP it uses
// now (a new port). It is MigrateTo with the zero Addr.
func (c *Conn) Migrate(ctx context.Context) error {
	return c.MigrateTo(ctx, netip.Addr{})
}

// MigrateTo moves the connection to a new UDP socket bound to ip, any port;
// the zero Addr keeps the IP of the socket in use. The steps follow RFC
// 9000 §9: open the socket, probe the path from it (PATH_CHALLENGE until a
// PATH_RESPONSE arrives or ctx ends), switch to it, then send on it at once
// so the edge learns the new address (quic-go's Switch sends nothing, and
// without a packet the edge keeps answering on the old path until the next
// keep-alive), and wait until the switch has taken effect.
//
// What may run while MigrateTo does:
//   - Reads, writes, CloseWrite, Close and Abort on established Tunnels, at
//     any time: stream I/O does not touch the path. Their bytes keep their
//     order; packets in flight on the old path are retransmitted on the new.
//   - RoundTrip and Tunnel: Conn orders them around the switch. quic-go's
//     HTTP/3 client reads the connection state when response headers arrive,
//     and that read races with the switch (quic-go pitfall 4), so a
//     RoundTrip holds the switch off until its response headers are in
//     (give requests on a roaming connection a deadline), and a Tunnel
//     while it writes its request headers (it reads no connection state).
//     New ones wait while the switch and its confirmation run, about two
//     round trips. MigrateTo waits for those in flight until ctx ends, then
//     gives up.
//   - Ping, LocalAddr, LocalAddrPort, RemoteAddr, ConnectionState,
//     Migrations, Context and Close (MigrateTo then fails).
//   - Another Migrate or MigrateTo: it waits for this one to end.
//
// Calling ConnectionState, LocalAddr or RemoteAddr of QUIC() directly is not
// safe while MigrateTo runs.
//
// Every socket stays open until Close, the dialing one and those whose
// probe failed too: the connection is registered with each transport it
// sent from, and closing one destroys the connection.
func (c *Conn) MigrateTo(ctx context.Context, ip netip.Addr) error {
	c.migrating.Lock()
	defer c.migrating.Unlock()
	if !ip.IsValid() {
		ip = c.LocalAddrPort().Addr()
	}
	tr, local, err := c.newTransport(ip)
	if err != nil {
		return err
	}
	path, err := c.qconn.AddPath(tr)
	if err != nil {
		return fmt.Errorf("add path from %s: %w", local, err)
	}
	if err := path.Probe(ctx); err != nil {
		_ = path.Close()
		return fmt.Errorf("probe path from %s: %w", local, err)
	}
	// Probing needs no lock: only the switch replaces what requests read.
	if err := c.pathLock.lock(ctx); err != nil {
		_ = path.Close()
		return fmt.Errorf("wait for requests in flight: %w", err)
	}
	defer c.pathLock.unlock()
	if err := path.Switch(); err != nil {
		_ = path.Close()
		return fmt.Errorf("switch to %s: %w", local, err)
	}
	c.mu.Lock()
	prev := c.path
	c.path = path
	c.local = local
	c.migrations++
	c.mu.Unlock()
	if err := c.confirmSwitch(ctx); err != nil {
		return fmt.Errorf("confirm switch to %s: %w", local, err)
	}
	if prev != nil {
		// Abandon the path left behind so its connection ID is retired and
		// the edge can issue a fresh one. Its transport stays (see above).
		_ = prev.Close()
	}
	return nil
}

// confirmSwitch sends on the new path at once and waits until the switch
// has taken effect. Switch only marks the path; quic-go's run loop switches
// on its next turn, and there is no API to learn when. So confirmSwitch
// sends two reserved streams, the second after the edge stopped the first
// (STOP_SENDING). The edge's STOP_SENDING for the first is handled on a run
// loop turn that began after Switch returned, and that turn checks for a
// pending switch before it sends; the second stream is sent on that turn or
// a later one, so its STOP_SENDING is handled after the switch. Its
// cancellation is the happens-before edge the race detector needs between
// the switch and requests that read the connection state.
//
// An edge that discards reserved streams without STOP_SENDING (RFC 9114
// §6.2 allows it) never answers: the wait then ends after confirmTimeout,
// and the switch is taken as done (in practice it is, long before).
func (c *Conn) confirmSwitch(ctx context.Context) error {
	for range 2 {
		if err := c.sendReserved(ctx, true); err != nil {
			if c.qconn.Context().Err() != nil {
				return context.Cause(c.qconn.Context())
			}
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return nil // unanswered: see above
		}
	}
	return nil
}

// errNoStopSending means the edge did not stop a reserved stream in time.
var errNoStopSending = errors.New("no STOP_SENDING from the edge")

// sendReserved opens a unidirectional stream of a reserved type (it carries
// just the type) and, with wait, waits up to confirmTimeout for the edge's
// STOP_SENDING; without wait it ends the stream (FIN) at once.
func (c *Conn) sendReserved(ctx context.Context, wait bool) error {
	var str *quic.SendStream
	var err error
	if wait {
		octx, cancel := context.WithTimeout(ctx, confirmTimeout)
		str, err = c.qconn.OpenUniStreamSync(octx)
		cancel()
	} else {
		str, err = c.qconn.OpenUniStream()
	}
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if _, err := str.Write([]byte{reservedStreamType}); err != nil {
		str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeNoError))
		return fmt.Errorf("write stream: %w", err)
	}
	if !wait {
		// Close fails when the edge's STOP_SENDING came first: it answered.
		_ = str.Close()
		return nil
	}
	timer := time.NewTimer(confirmTimeout)
	defer timer.Stop()
	select {
	case <-str.Context().Done():
		var serr *quic.StreamError
		if errors.As(context.Cause(str.Context()), &serr) && serr.Remote {
			return nil // STOP_SENDING; quic-go resets the stream itself
		}
		return context.Cause(str.Context())
	case <-timer.C:
		str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeNoError))
		return errNoStopSending
	case <-ctx.Done():
		str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeNoError))
		return context.Cause(ctx)
	}
}

// Ping makes the edge answer soon without waiting for it: it sends one
// ack-eliciting packet at once, a reserved stream (RFC 9114 §6.2.3) that any
// HTTP/3 server must ignore, which the edge acknowledges within its
// max_ack_delay (RFC 9000 §13.2.1). quic-go exposes no PING frame, and a
// request would reach the edge's handler; this reaches only its HTTP/3
// layer. The answer shows up in QUIC().ConnectionStats().PacketsReceived.
// It fails when the edge's stream limit is reached for the moment.
func (c *Conn) Ping() error {
	return c.sendReserved(context.Background(), false)
}

// pathLock orders path switches against requests: any number of holders
// share it, a switch holds it alone, and a waiting switch keeps new sharers
// out so a stream of requests cannot starve it. Unlike sync.RWMutex, waits
// end with a context.
type pathLock struct {
	mu      sync.Mutex // guards the following
	shared  int
	alone   bool
	waiting int           // waiting for alone
	wake    chan struct{} // closed and replaced when the state loosens
}

// rlock takes the lock shared.
func (l *pathLock) rlock(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.alone || l.waiting > 0 {
		if err := l.waitLocked(ctx); err != nil {
			return err
		}
	}
	l.shared++
	return nil
}

func (l *pathLock) runlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.shared--
	if l.shared == 0 {
		l.wakeLocked()
	}
}

// lock takes the lock alone.
func (l *pathLock) lock(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waiting++
	for l.alone || l.shared > 0 {
		if err := l.waitLocked(ctx); err != nil {
			l.waiting--
			l.wakeLocked()
			return err
		}
	}
	l.waiting--
	l.alone = true
	return nil
}

func (l *pathLock) unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.alone = false
	l.wakeLocked()
}

// waitLocked waits, without l.mu, until the state changes or ctx ends.
func (l *pathLock) waitLocked(ctx context.Context) error {
	if l.wake == nil {
		l.wake = make(chan struct{})
	}
	wake := l.wake
	l.mu.Unlock()
	defer l.mu.Lock()
	select {
	case <-wake:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (l *pathLock) wakeLocked() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}
