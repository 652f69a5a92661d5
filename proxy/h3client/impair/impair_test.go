package impair

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo is a UDP server on loopback that sends every datagram back.
func echo(t *testing.T) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// roundTrips sends n numbered datagrams through r and returns the numbers
// that came back, in arrival order, waiting wait after the last.
func roundTrips(t *testing.T, r *Relay, n int, wait time.Duration) []int {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res := make(chan []int)
	go func() { // reading as they come: a socket buffer holds only so many
		var got []int
		buf := make([]byte, 16)
		for {
			k, err := c.Read(buf)
			if err != nil {
				res <- got
				return
			}
			if k == 2 {
				got = append(got, int(buf[0])<<8|int(buf[1]))
			}
		}
	}()
	for i := range n {
		c.Write([]byte{byte(i >> 8), byte(i)})
		time.Sleep(100 * time.Microsecond)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	return <-res
}

// TestLoss: a loss of 20 % each way loses about 36 % of round trips, and
// the relay counts what it dropped.
func TestLoss(t *testing.T) {
	r, err := New(echo(t), Faults{Loss: 0.2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := roundTrips(t, r, 1000, 500*time.Millisecond)
	if len(got) < 540 || len(got) > 740 {
		t.Fatalf("%d of 1000 round trips came back, want about 640", len(got))
	}
	if st := r.Stats(); st.Dropped < 250 || st.Forwarded < 1000 {
		t.Fatalf("stats %+v", st)
	}
}

// TestJitterReorders: packets closer together than the jitter arrive out
// of order, and none is lost; the delay holds each back.
func TestJitterReorders(t *testing.T) {
	r, err := New(echo(t), Faults{Delay: 5 * time.Millisecond, Jitter: 20 * time.Millisecond, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := roundTrips(t, r, 200, time.Second)
	if len(got) != 200 {
		t.Fatalf("%d of 200 came back", len(got))
	}
	inversions := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inversions++
		}
	}
	if inversions < 20 {
		t.Fatalf("%d reorderings in 200 packets with 20 ms jitter", inversions)
	}
}

// TestEachClientSocketGetsItsOwnUpstream: like a NAT, the relay gives each
// client socket its own source address towards the target.
func TestEachClientSocketGetsItsOwnUpstream(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r, err := New(srv.LocalAddr().(*net.UDPAddr).AddrPort(), Faults{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	seen := map[netip.AddrPort]bool{}
	for range 3 {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.Write([]byte("y"))
		buf := make([]byte, 8)
		for range 2 {
			srv.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			seen[from] = true
		}
		c.Close()
	}
	if len(seen) != 3 {
		t.Fatalf("3 client sockets reached the target from %d addresses", len(seen))
	}
}

func TestFaultsOutOfRange(t *testing.T) {
	if _, err := New(netip.MustParseAddrPort("127.0.0.1:1"), Faults{Loss: 1.5}); err == nil {
		t.Fatal("a loss of 150 % was accepted")
	}
}

// TestSetFaults: a relay that loses everything passes everything once
// healed, and refuses faults out of range.
func TestSetFaults(t *testing.T) {
	r, err := New(echo(t), Faults{Loss: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := roundTrips(t, r, 50, 100*time.Millisecond); len(got) != 0 {
		t.Fatalf("%d round trips through a relay that loses everything", len(got))
	}
	if err := r.SetFaults(Faults{Loss: 2}); err == nil {
		t.Fatal("a loss of 2 was taken")
	}
	if err := r.SetFaults(Faults{}); err != nil {
		t.Fatal(err)
	}
	if got := roundTrips(t, r, 50, 200*time.Millisecond); len(got) != 50 {
		t.Fatalf("%d of 50 round trips through the healed relay", len(got))
	}
}

// TestRebind: after a rebind the edge sees the client from a new port
// (that packets still flow both ways, TestNATRebinding in proxy shows).
func TestRebind(t *testing.T) {
	r, err := New(echo(t), Faults{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := roundTrips(t, r, 10, 100*time.Millisecond); len(got) != 10 {
		t.Fatalf("%d of 10 round trips", len(got))
	}
	before := r.Mappings()
	if len(before) != 1 {
		t.Fatalf("mappings %v, want one", before)
	}
	if err := r.Rebind(); err != nil {
		t.Fatal(err)
	}
	after := r.Mappings()
	if len(after) != 1 || after[0] == before[0] {
		t.Fatalf("mappings %v after rebind, were %v", after, before)
	}
}
