package handoff

import (
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// generators are one of each connection-ID layout per generation: the
// unroutable one (no quic_lb) and a QUIC-LB one (encrypted, four-pass).
func generators(t *testing.T, gen int) []*quiclb.Generator {
	t.Helper()
	plain, err := quiclb.NewGenerator(nil, nil, gen)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := quiclb.NewCodec(quiclb.Config{ID: 1, ServerIDLen: 2, NonceLen: 8, Key: make([]byte, 16)})
	if err != nil {
		t.Fatal(err)
	}
	lb, err := quiclb.NewGenerator(codec, []byte{0x12, 0x34}, gen)
	if err != nil {
		t.Fatal(err)
	}
	return []*quiclb.Generator{plain, lb}
}

func shortHeader(cid []byte) []byte {
	return append(append([]byte{0x40 | 0x01}, cid...), make([]byte, 20)...)
}

func longHeader(first byte, version uint32, dcid []byte) []byte {
	b := []byte{first, byte(version >> 24), byte(version >> 16), byte(version >> 8), byte(version), byte(len(dcid))}
	b = append(b, dcid...)
	return append(append(b, 8), make([]byte, 28)...) // SCID and the rest
}

// TestPacketGeneration: the generation of a server-chosen ID is read from
// short-header and Handshake packets of both QUIC versions and both ID
// layouts; packets whose ID the client chose belong to the newest process.
func TestPacketGeneration(t *testing.T) {
	for gen := range quiclb.MaxGeneration + 1 {
		for _, g := range generators(t, gen) {
			for range 50 {
				id, err := g.GenerateConnectionID()
				if err != nil {
					t.Fatal(err)
				}
				cid := id.Bytes()
				for name, p := range map[string][]byte{
					"short":        shortHeader(cid),
					"v1 handshake": longHeader(0xc0|2<<4, version1, cid),
					"v2 handshake": longHeader(0xc0|3<<4, version2, cid),
				} {
					if got, ok := PacketGeneration(p); !ok || got != gen {
						t.Fatalf("%s with %x: generation %d %v, want %d", name, cid, got, ok, gen)
					}
				}
			}
		}
	}
	random := make([]byte, 8)
	rand.Read(random)
	for name, p := range map[string][]byte{
		"v1 initial":           longHeader(0xc0|0<<4, version1, random),
		"v1 0-rtt":             longHeader(0xc0|1<<4, version1, random),
		"v2 initial":           longHeader(0xc0|1<<4, version2, random),
		"v2 handshake in v1":   longHeader(0xc0|3<<4, version1, random),
		"version negotiation":  longHeader(0xc0, 0, random),
		"unknown version":      longHeader(0xc0|2<<4, 0x1a2a3a4a, random),
		"fixed bit clear":      append([]byte{0x01}, random...),
		"two bytes":            {0x40, 0x01},
		"handshake, short ID":  longHeader(0xc0|2<<4, version1, []byte{1}),
		"handshake, truncated": longHeader(0xc0|2<<4, version1, random)[:10],
	} {
		if g, ok := PacketGeneration(p); ok {
			t.Errorf("%s: generation %d, want the newest process's", name, g)
		}
	}
}

// TestDatagramFraming: the client's address survives the link exactly,
// IPv4-mapped IPv6 included (quic-go would take a changed form for a
// migration).
func TestDatagramFraming(t *testing.T) {
	for _, s := range []string{"127.0.0.1:443", "[::1]:65535", "[::ffff:127.0.0.1]:1", "[2001:db8::1]:8443"} {
		ap := netip.MustParseAddrPort(s)
		b := encodeDatagram(nil, ap, []byte("packet"))
		got, p, ok := decodeDatagram(b)
		if !ok || got != ap || string(p) != "packet" {
			t.Errorf("%s: got %v %q %v", s, got, p, ok)
		}
	}
	for _, b := range [][]byte{nil, {4, 1, 2}, {6, 1}, {5, 1, 2, 3, 4, 5, 6}} {
		if _, _, ok := decodeDatagram(b); ok {
			t.Errorf("%x decoded", b)
		}
	}
}

// pair is an old and a new process's forward-mode conns on one UDP socket
// (two descriptors of it), with the link between them.
type pair struct {
	server     *net.UDPConn
	old, new   *fwdConn
	oldEnd     *net.UnixConn // what the old process reads after release
	newLink    *link
	oldCID     []byte // an ID of generation 0 (old)
	newCID     []byte // and of generation 1
	closeExtra func()
}

func newPair(t *testing.T) *pair {
	t.Helper()
	server, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := server.File()
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	a, b, err := socketpair(syscall.SOCK_DGRAM)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := fdConn(a, "link")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := fdConn(b, "link")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	p := &pair{server: server}
	p.old = newFwdConn(server, 0, nil, zap.NewNop())
	p.new = newFwdConn(pc.(*net.UDPConn), 1, hold, zap.NewNop())
	p.oldEnd = ca
	raw, _ := cb.SyscallConn()
	p.newLink = &link{conn: cb, raw: raw, gen: 0, logger: zap.NewNop()}
	p.new.link.Store(p.newLink)
	p.oldCID, p.newCID = mustCID(t, 0), mustCID(t, 1)
	p.closeExtra = func() { close(hold) }
	t.Cleanup(func() {
		p.old.Close()
		p.new.Close()
		p.oldEnd.Close()
	})
	return p
}

func mustCID(t *testing.T, gen int) []byte {
	g, err := quiclb.NewGenerator(nil, nil, gen)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := g.GenerateConnectionID()
	return id.Bytes()
}

// read reads one packet from c within a second.
func read(t *testing.T, c *fwdConn) ([]byte, net.Addr, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	n, addr, err := c.ReadFrom(buf)
	return buf[:n], addr, err
}

// TestForwardMode: before the handover the old process reads the shared
// socket; after it, the new one does, and hands the old generation's
// packets to the old process with the client's address, whose answers go
// straight to the client; the new generation's and new clients' packets
// stay with the new process; once the old process is gone, its packets
// are the new one's to drop.
func TestForwardMode(t *testing.T) {
	p := newPair(t)
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	send := func(b []byte) {
		t.Helper()
		if _, err := client.WriteTo(b, p.server.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(c *fwdConn, want []byte, who string) {
		t.Helper()
		got, addr, err := read(t, c)
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		if string(got) != string(want) {
			t.Fatalf("%s read %x, want %x", who, got, want)
		}
		if addr.String() != client.LocalAddr().String() {
			t.Fatalf("%s: from %v, want the client %v", who, addr, client.LocalAddr())
		}
	}

	// Before: the old process reads everything (the new one holds).
	send(shortHeader(p.oldCID))
	expect(p.old, shortHeader(p.oldCID), "old before the handover")

	// The handover.
	p.old.release(p.oldEnd)
	p.closeExtra()
	send(shortHeader(p.oldCID))
	send(shortHeader(p.newCID))
	initial := longHeader(0xc0, version1, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	send(initial)
	// The new process's read loop forwards the first and returns the
	// others.
	expect(p.new, shortHeader(p.newCID), "new")
	expect(p.new, initial, "new")
	expect(p.old, shortHeader(p.oldCID), "old after the handover")

	// The old process answers on the shared socket, straight to the client.
	if _, err := p.old.WriteTo([]byte("answer"), client.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	if n, from, err := client.ReadFrom(buf); err != nil || string(buf[:n]) != "answer" || from.String() != p.server.LocalAddr().String() {
		t.Fatalf("answer: %q from %v: %v", buf[:n], from, err)
	}

	// A deadline the transport sets still ends a read after the switch.
	p.old.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := p.old.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	p.old.SetReadDeadline(time.Time{})

	// The old process gone: its packets stay with the new one.
	p.oldEnd.Close()
	send(shortHeader(p.oldCID))
	expect(p.new, shortHeader(p.oldCID), "new once the old process is gone")
	if !p.newLink.dead.Load() {
		t.Fatal("the link is not marked dead")
	}
}

// TestForwardModeResume: a successor that goes away before the handover
// completes leaves the old process reading the socket again.
func TestForwardModeResume(t *testing.T) {
	p := newPair(t)
	p.closeExtra()
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	p.old.release(p.oldEnd)
	got := make(chan []byte, 1)
	go func() {
		b, _, err := read(t, p.old)
		if err != nil {
			b = []byte(err.Error())
		}
		got <- b
	}()
	time.Sleep(50 * time.Millisecond) // the read waits on the link
	p.old.resume()
	if _, err := client.WriteTo(shortHeader(p.oldCID), p.server.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != string(shortHeader(p.oldCID)) {
		t.Fatalf("after resume the old process read %q", b)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": Auto, "auto": Auto, "bpf": BPF, "forward": Forward} {
		if m, err := ParseMode(in); err != nil || m != want {
			t.Errorf("%q: %v %v", in, m, err)
		}
	}
	if _, err := ParseMode("ebpf"); err == nil {
		t.Error("ebpf parsed")
	}
}
