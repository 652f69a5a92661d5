package steer

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roamgate/roamgate/proxy/quiclb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// needBPF fails in CI (which runs as root) and skips elsewhere when this
// process may not load the program.
func needBPF(t testing.TB) {
	t.Helper()
	if err := Supported(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must test the BPF path: %v", err)
		}
		t.Skipf("BPF not available: %v", err)
	}
}

// group is a reuseport group of n sockets on one loopback port.
func group(t testing.TB, network string, n int) []*net.UDPConn {
	t.Helper()
	host := "127.0.0.1"
	if network == "udp6" {
		host = "[::1]"
	}
	first, err := ListenUDP(context.Background(), network, host+":0")
	if err != nil {
		t.Fatal(err)
	}
	out := []*net.UDPConn{first}
	for range n - 1 {
		c, err := ListenUDP(context.Background(), network, first.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	closeOnCleanup(t, out)
	return out
}

func cid(t testing.TB, layout string, gen int) []byte {
	t.Helper()
	var g *quiclb.Generator
	var err error
	if layout == "unroutable" {
		g, err = quiclb.NewGenerator(nil, nil, gen)
	} else {
		codec, cerr := quiclb.NewCodec(quiclb.Config{ID: 1, ServerIDLen: 2, NonceLen: 12, Key: make([]byte, 16)})
		if cerr != nil {
			t.Fatal(cerr)
		}
		g, err = quiclb.NewGenerator(codec, []byte{1, 2}, gen)
	}
	if err != nil {
		t.Fatal(err)
	}
	id, err := g.GenerateConnectionID()
	if err != nil {
		t.Fatal(err)
	}
	return id.Bytes()
}

func short(id []byte) []byte { return append(append([]byte{0x41}, id...), make([]byte, 24)...) }

func long(first byte, version uint32, id []byte) []byte {
	b := []byte{first, byte(version >> 24), byte(version >> 16), byte(version >> 8), byte(version), byte(len(id))}
	return append(append(append(b, id...), 8), make([]byte, 30)...)
}

// receivedBy sends p from each of clients and returns, per client, which
// socket of the group got it (-1: none within a second).
func receivedBy(t *testing.T, socks []*net.UDPConn, clients []*net.UDPConn, p []byte) []int {
	t.Helper()
	type got struct {
		from string
		sock int
	}
	ch := make(chan got, len(clients))
	stop := make(chan struct{})
	done := make(chan struct{}, len(socks))
	for i, s := range socks {
		go func() {
			defer func() { done <- struct{}{} }()
			buf := make([]byte, 2048)
			for {
				s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				_, from, err := s.ReadFromUDP(buf)
				select {
				case <-stop:
					return
				default:
				}
				if err == nil {
					ch <- got{from.String(), i}
				}
			}
		}()
	}
	for _, c := range clients {
		if _, err := c.WriteTo(p, socks[0].LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	out := make([]int, len(clients))
	for i := range out {
		out[i] = -1
	}
	idx := map[string]int{}
	for i, c := range clients {
		idx[c.LocalAddr().String()] = i
	}
	deadline := time.After(time.Second)
	for n := 0; n < len(clients); {
		select {
		case g := <-ch:
			out[idx[g.from]] = g.sock
			n++
		case <-deadline:
			n = len(clients)
		}
	}
	close(stop)
	for range socks {
		<-done
	}
	return out
}

func clients(t *testing.T, network string, n int) []*net.UDPConn {
	t.Helper()
	ip := net.IPv4(127, 0, 0, 1)
	if network == "udp6" {
		ip = net.IPv6loopback
	}
	var out []*net.UDPConn
	for range n {
		c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	closeOnCleanup(t, out)
	return out
}

func all(got []int, want int) bool {
	for _, g := range got {
		if g != want {
			return false
		}
	}
	return true
}

// TestSteering: with the program attached, every packet of a generation
// reaches that generation's socket from any client address, new clients'
// packets the newest socket; once a generation's socket is closed, its
// packets reach the newest. Without the program the kernel's hash spreads
// them over both sockets (so the assertions can fail).
func TestSteering(t *testing.T) {
	needBPF(t)
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			socks := group(t, network, 2)
			from := clients(t, network, 50)
			gen0 := short(cid(t, "unroutable", 0))

			// The kernel's hash alone: both sockets get some.
			spread := receivedBy(t, socks, from, gen0)
			if all(spread, 0) || all(spread, 1) {
				t.Fatalf("without the program every packet went to one socket (%v): the test cannot tell steering from chance", spread)
			}

			s, err := Load()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for slot, c := range map[int]*net.UDPConn{0: socks[0], 1: socks[1]} {
				if err := s.Set(slot, c); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.SetNewest(1); err != nil {
				t.Fatal(err)
			}
			if err := s.Attach(socks[0]); err != nil {
				t.Fatal(err)
			}
			random := make([]byte, 8)
			rand.Read(random)
			for _, tc := range []struct {
				name string
				p    []byte
				want int
			}{
				{"short, unroutable layout, generation 0", short(cid(t, "unroutable", 0)), 0},
				{"short, unroutable layout, generation 1", short(cid(t, "unroutable", 1)), 1},
				{"short, quic-lb layout, generation 0", short(cid(t, "quic-lb", 0)), 0},
				{"short, quic-lb layout, generation 1", short(cid(t, "quic-lb", 1)), 1},
				{"v1 handshake, generation 0", long(0xe0, 1, cid(t, "quic-lb", 0)), 0},
				{"v2 handshake, generation 0", long(0xf0, 0x6b3343cf, cid(t, "unroutable", 0)), 0},
				{"v1 initial with a generation-0 looking ID", long(0xc0, 1, cid(t, "quic-lb", 0)), 1},
				{"v1 0-rtt", long(0xd0, 1, random), 1},
				{"v2 initial", long(0xd0, 0x6b3343cf, cid(t, "quic-lb", 0)), 1},
				{"unknown version", long(0xe0, 0x0a0a0a0a, cid(t, "quic-lb", 0)), 1},
				{"not QUIC", append([]byte{0x01}, cid(t, "quic-lb", 0)...), 1},
				{"generation 2: no socket, the newest", short(cid(t, "quic-lb", 2)), 1},
			} {
				if got := receivedBy(t, socks, from, tc.p); !all(got, tc.want) {
					t.Errorf("%s: received by %v, want all by %d", tc.name, got, tc.want)
				}
			}
			if ok, err := s.Occupied(0); err != nil || !ok {
				t.Fatalf("slot 0 occupied: %v %v", ok, err)
			}
			// The old process exits: its packets go to the newest.
			socks[0].Close()
			if ok, err := s.Occupied(0); err != nil || ok {
				t.Fatalf("slot 0 after its socket closed: occupied %v %v", ok, err)
			}
			if got := receivedBy(t, socks[1:], from, gen0); !all(got, 0) {
				t.Errorf("generation 0 after its socket closed: received %v", got)
			}
		})
	}
}

// TestAdopt: a successor that adopts the map through a passed descriptor
// steers with it: its socket in a new slot gets that generation.
func TestAdopt(t *testing.T) {
	needBPF(t)
	socks := group(t, "udp4", 2)
	from := clients(t, "udp4", 30)
	s, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Set(0, socks[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.SetNewest(0); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(socks[0]); err != nil {
		t.Fatal(err)
	}
	if got := receivedBy(t, socks, from, short(cid(t, "quic-lb", 1))); !all(got, 0) {
		t.Fatalf("before the successor: %v", got)
	}
	fd1, fd2, err := s.MapFDs()
	if err != nil {
		t.Fatal(err)
	}
	succ, err := Adopt(fd1, fd2)
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Close()
	if err := succ.Attach(socks[1]); err == nil {
		t.Fatal("an adopted map attached a program")
	}
	if err := succ.Set(1, socks[1]); err != nil {
		t.Fatal(err)
	}
	if err := succ.SetNewest(1); err != nil {
		t.Fatal(err)
	}
	if g, err := s.Newest(); err != nil || g != 1 {
		t.Fatalf("the predecessor sees newest %d %v", g, err)
	}
	if got := receivedBy(t, socks, from, short(cid(t, "quic-lb", 1))); !all(got, 1) {
		t.Errorf("generation 1 after the successor: %v", got)
	}
	if got := receivedBy(t, socks, from, short(cid(t, "quic-lb", 0))); !all(got, 0) {
		t.Errorf("generation 0 after the successor: %v", got)
	}
	if got := receivedBy(t, socks, from, long(0xc0, 1, cid(t, "quic-lb", 0))); !all(got, 1) {
		t.Errorf("an Initial after the successor: %v", got)
	}
	// Adopt takes the descriptors over, closing them on error.
	f, _ := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	g, _ := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if _, err := Adopt(f, g); err == nil {
		t.Error("adopted files that are not maps")
	}
}

// BenchmarkSteeredUDP: a packet through a reuseport group of two sockets,
// with the program and without (the kernel's hash), sent and received on
// loopback: the program's cost per packet is the difference.
func BenchmarkSteeredUDP(b *testing.B) {
	for _, steered := range []bool{false, true} {
		name := "hash"
		if steered {
			name = "program"
		}
		b.Run(name, func(b *testing.B) {
			socks := group(b, "udp4", 2)
			if steered {
				needBPF(b)
				s, err := Load()
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				s.Set(0, socks[0])
				s.Set(1, socks[1])
				s.SetNewest(1)
				if err := s.Attach(socks[0]); err != nil {
					b.Fatal(err)
				}
			} else {
				socks[1].Close() // one socket: the hash picks it
				socks = socks[:1]
			}
			c, err := net.DialUDP("udp4", nil, socks[0].LocalAddr().(*net.UDPAddr))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			p := short(cidB(b))
			buf := make([]byte, 2048)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(p); err != nil {
					b.Fatal(err)
				}
				if _, _, err := socks[0].ReadFromUDP(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func cidB(b *testing.B) []byte {
	g, err := quiclb.NewGenerator(nil, nil, 0)
	if err != nil {
		b.Fatal(err)
	}
	id, _ := g.GenerateConnectionID()
	return id.Bytes()
}

// closeOnCleanup closes conns when the test ends.
func closeOnCleanup(t testing.TB, conns []*net.UDPConn) {
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
}
