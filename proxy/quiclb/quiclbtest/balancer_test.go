package quiclbtest

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listen(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addr(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// read returns the next datagram on c, failing after 5 seconds.
func read(t *testing.T, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], from
}

// TestBalancer: a short-header packet whose connection ID names a server
// reaches that server from every client address; a long header with the
// client's random ID, and an unroutable ID, go by the 4-tuple hash, the
// same server each time for one client address; replies come back through
// the front socket.
func TestBalancer(t *testing.T) {
	codec, err := quiclb.NewCodec(quiclb.Config{ID: 1, ServerIDLen: 1, NonceLen: 8, Key: bytes.Repeat([]byte{3}, quiclb.KeyLen)})
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := listen(t), listen(t)
	b, err := New(codec, []Server{{ID: []byte{1}, Addr: addr(s1)}, {ID: []byte{2}, Addr: addr(s2)}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	gen, err := quiclb.NewGenerator(codec, []byte{2}, 0)
	if err != nil {
		t.Fatal(err)
	}
	front := net.UDPAddrFromAddrPort(b.Addr())
	for range 3 { // three client sockets: a migrating client
		client := listen(t)
		id, _ := gen.GenerateConnectionID()
		short := append([]byte{0x40}, id.Bytes()...)
		short = append(short, "payload"...)
		if _, err := client.WriteToUDP(short, front); err != nil {
			t.Fatal(err)
		}
		got, from := read(t, s2)
		if !bytes.Equal(got, short) {
			t.Fatalf("server 2 got %x, want %x", got, short)
		}
		// The reply goes back to the client from the front socket.
		if _, err := s2.WriteToUDPAddrPort([]byte("reply"), from); err != nil {
			t.Fatal(err)
		}
		if got, from := read(t, client); string(got) != "reply" || from != b.Addr() {
			t.Fatalf("client got %q from %v", got, from)
		}
	}
	client := listen(t)
	initial := []byte{0xc0, 0, 0, 0, 1, 8, 0xe1, 2, 3, 4, 5, 6, 7, 8, 0}
	unroutable, _ := (must(quiclb.NewGenerator(nil, nil, 0))).GenerateConnectionID()
	shortUnroutable := append([]byte{0x40}, unroutable.Bytes()[:codec.Config().Len()]...)
	for _, pkt := range [][]byte{initial, shortUnroutable, initial} {
		if _, err := client.WriteToUDP(pkt, front); err != nil {
			t.Fatal(err)
		}
	}
	want, _, _, _ := b.Route(addr(client), initial)
	srv := s1
	if want == addr(s2) {
		srv = s2
	}
	for range 3 {
		read(t, srv)
	}
	ps := b.Packets()
	if len(ps) != 6 {
		t.Fatalf("%d packets recorded, want 6", len(ps))
	}
	for i, p := range ps {
		wantByCID, wantLong := i < 3, i == 3 || i == 5
		if p.ByCID != wantByCID || p.Long != wantLong || (wantByCID && p.Server != addr(s2)) || (!wantByCID && p.Server != want) {
			t.Errorf("packet %d: %+v", i, p)
		}
	}
	if !bytes.Equal(ps[3].DCID, initial[6:14]) {
		t.Errorf("long header DCID %x", ps[3].DCID)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestBalancerHashOnly: without a codec every packet goes by the 4-tuple
// hash, whatever its connection ID says.
func TestBalancerHashOnly(t *testing.T) {
	s1, s2 := listen(t), listen(t)
	b, err := New(nil, []Server{{ID: []byte{1}, Addr: addr(s1)}, {ID: []byte{2}, Addr: addr(s2)}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	routed := map[netip.AddrPort]bool{}
	for port := uint16(1000); port < 1064; port++ {
		client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		server, _, _, byCID := b.Route(client, []byte{0x40, 0x20, 2, 0, 0, 0, 0, 0, 0, 0, 0})
		if byCID {
			t.Fatal("routed by connection ID without a codec")
		}
		routed[server] = true
	}
	if len(routed) != 2 {
		t.Fatalf("64 client ports hashed onto %d servers, want both", len(routed))
	}
}
