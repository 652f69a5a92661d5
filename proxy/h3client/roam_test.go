package h3client

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/roamgate/roamgate/proxy/h3client/edgetest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// testRoute is a RouteFunc a test can change.
//
// Loopback offers one honest local address per family, and a connection to
// 127.0.0.1 cannot move to ::1, so a test cannot make the kernel pick a new
// source address. What a network change means to the Roamer is a Route
// different from the one it settled on: a new LocalIP or a new Network. The
// tests change Network ("wlan0" to "wwan0") and keep LocalIP 127.0.0.1, and
// check what follows for real: the Roamer migrates once, to a new socket
// bound to the LocalIP the route gave, the edge follows, the tunnel goes on,
// and a stable route causes nothing more. Only where the change comes from
// is simulated; SystemRoute, which fills both fields from the kernel, is
// tested on its own.
type testRoute struct {
	mu  sync.Mutex
	rt  Route
	err error
}

func newTestRoute(network string) *testRoute {
	return &testRoute{rt: Route{LocalIP: loopback, Network: network}}
}

func (r *testRoute) lookup(context.Context, netip.AddrPort) (Route, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rt, r.err
}

func (r *testRoute) set(network string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rt.Network, r.err = network, err
}

// newRoamer returns a Roamer for c whose events arrive on the channel.
func newRoamer(t *testing.T, c *Conn, cfg RoamerConfig) (*Roamer, chan Event) {
	t.Helper()
	events := make(chan Event, 8)
	cfg.OnEvent = func(ev Event) { events <- ev }
	r, err := NewRoamer(c, cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Conn().Close() })
	return r, events
}

// noRedial fails a test whose Roamer should never need a new connection.
func noRedial(t *testing.T) func(context.Context) (*Conn, error) {
	return func(context.Context) (*Conn, error) {
		t.Error("the roamer redialed")
		return nil, errors.New("no redial in this test")
	}
}

// redial dials addr again, trusting e.
func redial(addr string, e *edgetest.Edge) func(context.Context) (*Conn, error) {
	return func(ctx context.Context) (*Conn, error) { return Dial(ctx, addr, e.ClientTLS(), nil) }
}

func nextEvent(t *testing.T, events <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(waitLimit):
		t.Fatal("no roaming event")
		return Event{}
	}
}

func noEvent(t *testing.T, events <-chan Event) {
	t.Helper()
	select {
	case ev := <-events:
		t.Fatalf("unexpected event: %s", ev)
	default:
	}
}

// checkUntilEvent runs checks, as the ticks of Run would, until one
// produces an event.
func checkUntilEvent(t *testing.T, r *Roamer, events <-chan Event, maxChecks int) Event {
	t.Helper()
	for range maxChecks {
		r.checkOnce(context.Background())
		select {
		case ev := <-events:
			return ev
		default:
		}
	}
	t.Fatalf("no event after %d checks", maxChecks)
	return Event{}
}

// TestRoamerMigratesOnNetworkChange: when the route to the edge changes,
// the next check migrates the connection to a new socket on the route's
// address, and the open tunnel carries on (see testRoute for what is
// simulated).
func TestRoamerMigratesOnNetworkChange(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	route := newTestRoute("wlan0")
	r, events := newRoamer(t, c, RoamerConfig{Route: route.lookup, Redial: noRedial(t)})
	tun := openTunnel(t, c, echoAuthority)
	echo(t, tun, "before")

	ctx := context.Background()
	r.checkOnce(ctx) // the baseline
	noEvent(t, events)
	before := c.LocalAddrPort()

	route.set("wwan0", nil)
	r.checkOnce(ctx)
	ev := nextEvent(t, events)
	if ev.Kind != Migrated || ev.Reason != "network change" || ev.Conn != c {
		t.Fatalf("event %+v", ev)
	}
	now := c.LocalAddrPort()
	if ev.Local != now || now.Addr() != loopback || now.Port() == before.Port() {
		t.Fatalf("moved from %s to %s (event says %s), want a new port on %s", before, now, ev.Local, loopback)
	}
	if !edgeSees(e, now) {
		t.Fatalf("the edge still sends to %s", e.Conns()[0].RemoteAddr())
	}
	if want := "migrated to " + now.String() + " (network change)"; ev.String() != want {
		t.Fatalf("event line %q, want %q", ev, want)
	}

	r.checkOnce(ctx) // same route: nothing to do
	noEvent(t, events)
	echo(t, tun, "after")
	if c.Migrations() != 1 || e.Echo.Accepted() != 1 {
		t.Fatalf("%d migrations, %d backend connections; want 1 and 1", c.Migrations(), e.Echo.Accepted())
	}
}

// TestRoamerIgnoresNoRoute: while the kernel has no route to the edge
// (offline), checks neither migrate nor redial; the route that comes back
// decides.
func TestRoamerIgnoresNoRoute(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	route := newTestRoute("wlan0")
	r, events := newRoamer(t, c, RoamerConfig{Route: route.lookup, Redial: noRedial(t), DeadAfter: 2})
	ctx := context.Background()
	r.checkOnce(ctx)
	route.set("wlan0", errors.New("network is unreachable"))
	for range 5 { // silent checks, but offline ones
		r.checkOnce(ctx)
	}
	noEvent(t, events)
	route.set("eth0", nil)
	if ev := checkUntilEvent(t, r, events, 1); ev.Kind != Migrated || ev.Reason != "network change" {
		t.Fatalf("event %+v", ev)
	}
}

// TestRoamerStaysOnHealthyPath: an idle connection on a working path is
// left alone. A check that saw nothing since the previous one pings, and
// the edge answers before the next check (an interval is far longer than
// a round trip); the test waits for that answer instead of an interval.
func TestRoamerStaysOnHealthyPath(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	r, events := newRoamer(t, c, RoamerConfig{Route: newTestRoute("lo").lookup, Redial: noRedial(t), DeadAfter: 2})
	pings := 0
	for range 10 {
		before := c.QUIC().ConnectionStats().PacketsReceived
		r.checkOnce(context.Background())
		if r.silent > 0 {
			pings++
			waitFor(t, "the answer to a ping", func() bool { return c.QUIC().ConnectionStats().PacketsReceived != before })
		}
	}
	noEvent(t, events)
	if c.Migrations() != 0 || pings == 0 {
		t.Fatalf("%d migrations, %d pings; want 0 and some", c.Migrations(), pings)
	}
}

// TestRoamerMigratesFromDeadPath: a relay between client and edge starts
// dropping everything to and from the client's socket; the running Roamer
// notices the silence, migrates to a new socket (a new source port the
// relay still carries), and the tunnel delivers what was written into the
// dead path.
func TestRoamerMigratesFromDeadPath(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	relay := edgetest.NewRelay(t, e.Addr)
	c := dial(t, relay.Addr(), e)
	r, events := newRoamer(t, c, RoamerConfig{
		Route:        newTestRoute("lo").lookup,
		Redial:       noRedial(t),
		Interval:     50 * time.Millisecond,
		ProbeTimeout: 2 * time.Second,
	})
	tun := openTunnel(t, c, echoAuthority)
	echo(t, tun, "before")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	dead := c.LocalAddrPort()
	relay.Blackhole(dead)
	if _, err := tun.Write([]byte("into the dead path")); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, events)
	if ev.Kind != Migrated || ev.Reason != "path stopped answering" || ev.Local == dead {
		t.Fatalf("event %+v (dead socket %s)", ev, dead)
	}
	if got := readFull(t, tun, len("into the dead path")); string(got) != "into the dead path" {
		t.Fatalf("got %q", got)
	}
	echo(t, tun, "after")
	if e.Echo.Accepted() != 1 || len(e.Conns()) != 1 {
		t.Fatalf("%d backend connections, %d QUIC connections; want 1 and 1", e.Echo.Accepted(), len(e.Conns()))
	}
}

// TestRoamerReconnects: when the connection cannot go on, the Roamer dials
// a new one, hands it over and closes the old one with its tunnels.
func TestRoamerReconnects(t *testing.T) {
	t.Run("migration impossible", func(t *testing.T) {
		// The edge behind the relay is replaced by another with the same
		// certificate (a restart, a failover): the new one knows nothing of
		// the connection and drops its packets, probes included.
		e1 := edgetest.Start(t, edgetest.Options{Token: testToken})
		e2 := edgetest.Start(t, edgetest.Options{Token: testToken, Cert: e1.Cert})
		relay := edgetest.NewRelay(t, e1.Addr)
		c := dial(t, relay.Addr(), e1)
		r, events := newRoamer(t, c, RoamerConfig{
			Route:        newTestRoute("lo").lookup,
			Redial:       redial(relay.Addr(), e1),
			DeadAfter:    2,
			ProbeTimeout: 300 * time.Millisecond,
		})
		old := openTunnel(t, c, echoAuthority)
		echo(t, old, "before")

		relay.Retarget(e2.Addr)
		ev := checkUntilEvent(t, r, events, 5)
		if ev.Kind != Reconnected || ev.Reason != "migration impossible" || ev.Err == nil || ev.Old != c || ev.Conn != r.Conn() || ev.Conn == c {
			t.Fatalf("event %+v", ev)
		}
		if line := ev.String(); !strings.HasPrefix(line, "reconnected: migration impossible: probe path from 127.0.0.1:") {
			t.Fatalf("event line %q", line)
		}
		checkReplaced(t, c, old, r.Conn(), e2)
	})

	t.Run("connection lost", func(t *testing.T) {
		e := edgetest.Start(t, edgetest.Options{Token: testToken})
		c := dial(t, e.Addr, e)
		r, events := newRoamer(t, c, RoamerConfig{Route: newTestRoute("lo").lookup, Redial: redial(e.Addr, e)})
		old := openTunnel(t, c, echoAuthority)
		echo(t, old, "before")

		e.CloseConns()
		waitFor(t, "the connection to close", func() bool { return c.Context().Err() != nil })
		ev := checkUntilEvent(t, r, events, 1)
		if ev.Kind != Reconnected || ev.Reason != "connection lost" || ev.Err == nil || ev.Old != c {
			t.Fatalf("event %+v", ev)
		}
		checkReplaced(t, c, old, r.Conn(), e)
	})
}

// checkReplaced checks that old is closed, its tunnel fails, and a tunnel
// on now reaches e.
func checkReplaced(t *testing.T, old *Conn, oldTun *Tunnel, now *Conn, e *edgetest.Edge) {
	t.Helper()
	if old.Context().Err() == nil {
		t.Fatal("the old connection is still open")
	}
	if _, err := oldTun.Read(make([]byte, 1)); !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("read a tunnel on the old connection: %v, want ErrConnectionLost", err)
	}
	echo(t, openTunnel(t, now, echoAuthority), "on the new connection")
	if n := e.Echo.Accepted(); n < 1 {
		t.Fatalf("the edge's backend saw %d connections", n)
	}
}

// TestRoamerRecoversPanics: a panic in a check is logged with its stack and
// the checks go on; Run closes the connection when ctx ends.
func TestRoamerRecoversPanics(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	var calls atomic.Int64
	route := func(context.Context, netip.AddrPort) (Route, error) {
		if calls.Add(1) == 1 {
			panic("route source broke")
		}
		return Route{LocalIP: loopback}, nil
	}
	core, logs := observer.New(zap.DebugLevel)
	r, err := NewRoamer(c, RoamerConfig{Route: route, Redial: noRedial(t), Interval: 10 * time.Millisecond}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		r.Run(ctx)
		close(done)
	}()
	waitFor(t, "checks after the panic", func() bool { return calls.Load() >= 3 })
	cancel()
	<-done
	panics := logs.FilterMessage("roaming check panicked").All()
	if len(panics) != 1 || !strings.Contains(panics[0].ContextMap()["stack"].(string), "checkOnce") {
		t.Fatalf("logged panics: %+v", panics)
	}
	if c.Context().Err() == nil {
		t.Fatal("Run left the connection open")
	}
}

func TestNewRoamerChecksConfig(t *testing.T) {
	e := edgetest.Start(t, edgetest.Options{Token: testToken})
	c := dial(t, e.Addr, e)
	for _, cfg := range []RoamerConfig{
		{},
		{Redial: redial(e.Addr, e), Interval: -time.Second},
		{Redial: redial(e.Addr, e), DeadAfter: -1},
	} {
		if _, err := NewRoamer(c, cfg, nil); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	if _, err := NewRoamer(nil, RoamerConfig{Redial: redial(e.Addr, e)}, nil); err == nil {
		t.Error("no connection accepted")
	}
}

func TestEventString(t *testing.T) {
	local := netip.MustParseAddrPort("10.0.0.7:51234")
	for _, tc := range []struct {
		ev   Event
		want string
	}{
		{Event{Kind: Migrated, Reason: "network change", Local: local}, "migrated to 10.0.0.7:51234 (network change)"},
		{Event{Kind: Migrated, Reason: "path stopped answering", Local: local}, "migrated to 10.0.0.7:51234 (path stopped answering)"},
		{Event{Kind: Reconnected, Reason: "migration impossible", Err: errors.New("probe path: timeout")}, "reconnected: migration impossible: probe path: timeout"},
		{Event{Kind: Reconnected, Reason: "connection lost"}, "reconnected: connection lost"},
	} {
		if got := tc.ev.String(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

// TestSystemRoute asks the kernel for its route to loopback: the source is
// the loopback address of the family, held by the loopback interface.
func TestSystemRoute(t *testing.T) {
	for _, remote := range []string{"127.0.0.1:9", "[::1]:9"} {
		ap := netip.MustParseAddrPort(remote)
		rt, err := SystemRoute(context.Background(), ap)
		if err != nil {
			if ap.Addr().Is6() {
				t.Logf("no IPv6 loopback here: %v", err)
				continue
			}
			t.Fatal(err)
		}
		if rt.LocalIP != ap.Addr() || rt.Network == "" {
			t.Errorf("route to %s: %+v, want %s on the loopback interface", remote, rt, ap.Addr())
		}
	}
}
