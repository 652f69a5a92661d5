package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy/h3client"
	"github.com/roamgate/roamgate/proxy/quiclb"
	"github.com/roamgate/roamgate/proxy/quiclb/quiclbtest"
)

// startProxyGen is startProxy for a process of the given generation.
func startProxyGen(t *testing.T, roamfile string, generation int) *harness {
	t.Helper()
	logger, logs := testLogger(t)
	h := startProxyWith(t, roamfile, nil, logger, Options{Generation: generation})
	h.logs = logs
	return h
}

const testLBKey = "8f95f09245765f80256934e50c66207f"

// lbSite is siteFor with a quic_lb block and every client proving its
// address with a Retry first (handshake_rate 0), whose source connection ID
// must route too.
func lbSite(quicLB, upstream string) string {
	return "{\n\tdefault_bind 127.0.0.1\n\thandshake_rate 0\n" + quicLB + "}\nlocalhost:0 {\n\treverse_proxy " + upstream + "\n}\n"
}

// servedBy waits until one of hs has opened the client's session and
// returns its index.
func servedBy(t *testing.T, hs []*harness) int {
	t.Helper()
	served := -1
	eventually(t, "a session", func() bool {
		for i, h := range hs {
			if h.sessionsOpened("h3") == 1 {
				served = i
			}
		}
		return served >= 0
	})
	for i, h := range hs {
		if i != served && h.sessionsOpened("h3") != 0 {
			t.Fatalf("instance %d opened a session too", i)
		}
	}
	return served
}

// dialThrough dials addr trusting the local CAs of every instance of hs.
func dialThrough(t *testing.T, addr netip.AddrPort, hs []*harness) *h3client.Conn {
	t.Helper()
	roots := x509.NewCertPool()
	for _, h := range hs {
		roots.AddCert(h.certs.LocalCA().Root())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h3client.Dial(ctx, addr.String(), &tls.Config{RootCAs: roots, ServerName: "localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRoutableConnectionIDs: two instances with QUIC-LB server IDs 0a and
// 0b behind a balancer that routes by server ID (quiclbtest, the decoder of
// `roamgate cid decode`). A client does requests, migrates to a new socket
// (a new 4-tuple for the balancer), does more, migrates again and does
// more. Every server connection ID the client sent to, on every path,
// before and after each migration (the Retry's, the handshake's, those of
// NEW_CONNECTION_ID frames), decodes to the server ID of the instance that
// holds the connection and carries its generation, so the balancer routed
// every packet after the client's first Initials by connection ID; each
// path used IDs of its own; one session, one upstream connection.
func TestRoutableConnectionIDs(t *testing.T) {
	for _, tc := range []struct{ name, key string }{{"plaintext", ""}, {"four-pass", "\t\tkey " + testLBKey + "\n"}} {
		t.Run(tc.name, func(t *testing.T) {
			app := startApp(t, "app", nil)
			lb := closeLast(t)
			var hs []*harness
			var servers []quiclbtest.Server
			for _, sid := range []string{"0a", "0b"} {
				h := startProxyGen(t, lbSite("\tquic_lb {\n\t\tserver_id "+sid+"\n\t\tnonce_len 12\n\t\tconfig_id 1\n"+tc.key+"\t}\n", app.Addr()), 1)
				hs = append(hs, h)
				id, _ := hex.DecodeString(sid)
				servers = append(servers, quiclbtest.Server{ID: id, Addr: netip.MustParseAddrPort(h.addr)})
			}
			cfg := quiclb.Config{ID: 1, ServerIDLen: 1, NonceLen: 12}
			if tc.key != "" {
				cfg.Key, _ = hex.DecodeString(testLBKey)
			}
			codec, err := quiclb.NewCodec(cfg)
			if err != nil {
				t.Fatal(err)
			}
			lb.start(t, codec, servers)

			c := dialThrough(t, lb.Addr(), hs)
			served := servedBy(t, hs)
			h := hs[served]
			paths := []netip.AddrPort{c.LocalAddrPort()}
			var conns []int
			for i := range 3 {
				if i > 0 {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					err := c.Migrate(ctx)
					cancel()
					if err != nil {
						t.Fatalf("migration %d: %v", i, err)
					}
					paths = append(paths, c.LocalAddrPort())
				}
				for range 2 {
					r := seen(t, c, h, "c1")
					conns = append(conns, r.Conn)
				}
			}
			for i, conn := range conns {
				if conn != conns[0] {
					t.Fatalf("request %d on upstream connection %d, the first on %d", i, conn, conns[0])
				}
			}
			if h.sessionsOpened("h3") != 1 || hs[1-served].sessionsOpened("h3") != 0 {
				t.Fatal("a new handshake happened")
			}

			pkts := lb.Packets()
			if len(pkts) == 0 || !pkts[0].Long {
				t.Fatalf("first packet %+v, want the client's Initial", pkts)
			}
			clientDCID := pkts[0].DCID // chosen by the client: the only unroutable one
			byPath := map[netip.AddrPort]map[string]bool{}
			var retried bool
			for i, p := range pkts {
				if p.Long && bytes.Equal(p.DCID, clientDCID) {
					if p.ByCID {
						t.Fatalf("packet %d: the client's random ID %x was routed by connection ID", i, p.DCID)
					}
					continue
				}
				d, err := codec.Decode(p.DCID)
				if err != nil || !p.ByCID || p.Server != servers[served].Addr || !bytes.Equal(d.ServerID, servers[served].ID) || d.Generation != 1 {
					t.Fatalf("packet %d (%+v) to %x: decoded %+v, %v; want server ID %x, generation 1, routed by it to %v",
						i, p, p.DCID, d, err, servers[served].ID, servers[served].Addr)
				}
				if p.Long {
					retried = true // the Initial after the Retry, Handshake packets
					continue
				}
				if byPath[p.Client] == nil {
					byPath[p.Client] = map[string]bool{}
				}
				byPath[p.Client][string(p.DCID)] = true
			}
			if !retried {
				t.Fatal("no long-header packet to a server connection ID: no Retry?")
			}
			used := map[string]int{}
			for i, path := range paths {
				if len(byPath[path]) == 0 {
					t.Fatalf("path %d (%v): no short-header packets; seen on %v", i, path, slices.Collect(maps.Keys(byPath)))
				}
				for id := range byPath[path] {
					if j, dup := used[id]; dup {
						t.Fatalf("connection ID %x used on paths %d and %d: not a fresh ID after migrating", id, j, i)
					}
					used[id] = i
				}
			}
			t.Logf("served by %x; server connection IDs per path: %v", servers[served].ID, idsPerPath(paths, byPath))
		})
	}
}

// TestUnroutableConnectionIDs: without quic_lb, every server connection ID
// the client uses, before and after migrating, is unroutable (config
// rotation 7, self-encoded length, 10 bytes) and carries the process
// generation in its second octet.
func TestUnroutableConnectionIDs(t *testing.T) {
	app := startApp(t, "app", nil)
	lb := closeLast(t)
	h := startProxyGen(t, lbSite("", app.Addr()), 3)
	// A codec of the unroutable length, so the balancer reads short-header
	// IDs; none decodes.
	codec, err := quiclb.NewCodec(quiclb.Config{ServerIDLen: 1, NonceLen: quiclb.UnroutableLen - 2})
	if err != nil {
		t.Fatal(err)
	}
	lb.start(t, codec, []quiclbtest.Server{{ID: []byte{1}, Addr: netip.MustParseAddrPort(h.addr)}})
	c := dialThrough(t, lb.Addr(), []*harness{h})
	seen(t, c, h, "c1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	seen(t, c, h, "c1")
	pkts := lb.Packets()
	short := map[string]bool{}
	for i, p := range pkts {
		if p.Long && bytes.Equal(p.DCID, pkts[0].DCID) {
			continue // the client's own
		}
		gen, err := quiclb.Generation(p.DCID)
		if len(p.DCID) != quiclb.UnroutableLen || p.DCID[0] != 0xe9 || err != nil || gen != 3 || p.ByCID {
			t.Fatalf("packet %d (%+v): ID %x, generation %d (%v); want %d bytes from e9, generation 3", i, p, p.DCID, gen, err, quiclb.UnroutableLen)
		}
		if !p.Long {
			short[string(p.DCID)] = true
		}
	}
	if len(short) < 2 {
		t.Fatalf("%d server connection IDs in short headers, want one per path", len(short))
	}
}

// testBalancer is a quiclbtest.Balancer started after the instances behind
// it and closed after they shut down: the client's CONNECTION_CLOSE and the
// instances' last packets still pass.
type testBalancer struct{ *quiclbtest.Balancer }

// closeLast returns a testBalancer to start later, closed when the test
// ends after everything started from here on.
func closeLast(t *testing.T) *testBalancer {
	lb := &testBalancer{}
	t.Cleanup(func() {
		if lb.Balancer != nil {
			lb.Close()
		}
	})
	return lb
}

func (lb *testBalancer) start(t *testing.T, codec *quiclb.Codec, servers []quiclbtest.Server) {
	t.Helper()
	b, err := quiclbtest.New(codec, servers)
	if err != nil {
		t.Fatal(err)
	}
	lb.Balancer = b
}

func idsPerPath(paths []netip.AddrPort, byPath map[netip.AddrPort]map[string]bool) string {
	var b bytes.Buffer
	for i, p := range paths {
		fmt.Fprintf(&b, "[%d", i)
		for id := range byPath[p] {
			fmt.Fprintf(&b, " %x", id)
		}
		b.WriteString("]")
	}
	return b.String()
}

// TestNewGeneration: New refuses a generation the connection IDs cannot
// carry.
func TestNewGeneration(t *testing.T) {
	cfg, err := configs.Parse("Roamfile", []byte(siteFor("", "127.0.0.1:1")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, Options{Generation: quiclb.MaxGeneration + 1}); err == nil {
		t.Fatal("New accepted generation 4")
	}
	srv, err := New(cfg, Options{Generation: quiclb.MaxGeneration})
	if err != nil {
		t.Fatal(err)
	}
	if srv.cids.Generation() != quiclb.MaxGeneration || srv.cids.ConnectionIDLen() != quiclb.UnroutableLen {
		t.Fatalf("generator: generation %d, length %d", srv.cids.Generation(), srv.cids.ConnectionIDLen())
	}
}
