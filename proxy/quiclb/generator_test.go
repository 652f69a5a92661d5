package quiclb

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

// TestGenerator: for each algorithm and generation, every ID a Generator
// issues has its length, decodes to its server ID with that generation,
// is new, and Generation reads the generation back without the codec.
func TestGenerator(t *testing.T) {
	sid := []byte{0xab, 0xcd}
	for _, cfg := range []Config{
		{ID: 1, ServerIDLen: 2, NonceLen: 8},
		{ID: 2, ServerIDLen: 2, NonceLen: 14, Key: bytes.Repeat([]byte{7}, KeyLen)}, // single pass
		{ID: 6, ServerIDLen: 2, NonceLen: 9, Key: bytes.Repeat([]byte{7}, KeyLen)},  // four passes, odd
	} {
		for gen := range MaxGeneration + 1 {
			c, err := NewCodec(cfg)
			if err != nil {
				t.Fatal(err)
			}
			g, err := NewGenerator(c, sid, gen)
			if err != nil {
				t.Fatal(err)
			}
			if g.ConnectionIDLen() != cfg.Len() || g.Generation() != gen || !bytes.Equal(g.ServerID(), sid) {
				t.Fatalf("%s: length %d, generation %d, server ID %x", cfg.Algorithm(), g.ConnectionIDLen(), g.Generation(), g.ServerID())
			}
			seen := map[string]bool{}
			low := map[byte]bool{} // the random bits 4-2 of the first octet
			for range 200 {
				id, err := g.GenerateConnectionID()
				if err != nil {
					t.Fatal(err)
				}
				b := id.Bytes()
				if len(b) != cfg.Len() || seen[string(b)] {
					t.Fatalf("%s: ID %x: wrong length or repeated", cfg.Algorithm(), b)
				}
				seen[string(b)] = true
				low[b[0]>>2&7] = true
				d, err := c.Decode(b)
				if err != nil || !bytes.Equal(d.ServerID, sid) || d.Generation != gen || d.ConfigID != cfg.ID {
					t.Fatalf("%s: Decode(%x) = %+v, %v", cfg.Algorithm(), b, d, err)
				}
				if got, err := Generation(b); err != nil || got != gen {
					t.Fatalf("Generation(%x) = %d, %v; want %d", b, got, err, gen)
				}
			}
			if len(low) < 2 {
				t.Fatalf("%s: the first octet's bits 4-2 are not random: %v", cfg.Algorithm(), low)
			}
		}
	}
}

// TestUnroutableGenerator: without a codec, IDs are UnroutableLen bytes,
// config rotation 7 with the self-encoded length, the generation in the
// second octet, and no codec decodes them.
func TestUnroutableGenerator(t *testing.T) {
	c, err := NewCodec(Config{ServerIDLen: 1, NonceLen: 8})
	if err != nil {
		t.Fatal(err)
	}
	for gen := range MaxGeneration + 1 {
		g, err := NewGenerator(nil, nil, gen)
		if err != nil {
			t.Fatal(err)
		}
		if g.ConnectionIDLen() != UnroutableLen || g.ServerID() != nil {
			t.Fatalf("length %d, server ID %x", g.ConnectionIDLen(), g.ServerID())
		}
		seen := map[string]bool{}
		for range 100 {
			id, err := g.GenerateConnectionID()
			if err != nil {
				t.Fatal(err)
			}
			b := id.Bytes()
			if len(b) != UnroutableLen || b[0] != 0xe9 || seen[string(b)] {
				t.Fatalf("ID %x: want %d bytes starting e9, new", b, UnroutableLen)
			}
			seen[string(b)] = true
			if got, err := Generation(b); err != nil || got != gen {
				t.Fatalf("Generation(%x) = %d, %v; want %d", b, got, err, gen)
			}
			if _, err := c.Decode(b); !errors.Is(err, ErrUnroutable) {
				t.Fatalf("Decode(%x) = %v, want ErrUnroutable", b, err)
			}
		}
	}
}

func TestNewGeneratorErrors(t *testing.T) {
	codec := func(cfg Config) *Codec {
		c, err := NewCodec(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		c    *Codec
		sid  []byte
		gen  int
		want string
	}{
		{nil, nil, 4, "generation 4 out of range"},
		{nil, nil, -1, "generation -1 out of range"},
		{codec(Config{ServerIDLen: 2, NonceLen: 8}), []byte{1}, 0, "server ID of 1 bytes, want 2"},
		{codec(Config{ServerIDLen: 2, NonceLen: 7}), []byte{1, 2}, 0, "nonce length 7: want at least 8"},
		{codec(Config{ServerIDLen: 2, NonceLen: 8, SelfEncodeLength: true}), []byte{1, 2}, 0, "no bits for the process generation"},
	} {
		if _, err := NewGenerator(tc.c, tc.sid, tc.gen); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewGenerator = %v, want %q", err, tc.want)
		}
	}
}

// TestGeneratorConcurrent: quic-go calls one Generator from every
// connection's goroutine (run with -race).
func TestGeneratorConcurrent(t *testing.T) {
	c, err := NewCodec(Config{ServerIDLen: 3, NonceLen: 10, Key: make([]byte, KeyLen)})
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewGenerator(c, []byte{1, 2, 3}, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				id, err := g.GenerateConnectionID()
				if err != nil {
					t.Error(err)
					return
				}
				if d, err := c.Decode(id.Bytes()); err != nil || !bytes.Equal(d.ServerID, []byte{1, 2, 3}) {
					t.Errorf("Decode(%x) = %+v, %v", id.Bytes(), d, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestGenerationErrors(t *testing.T) {
	if _, err := Generation(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("Generation(nil) = %v", err)
	}
	if _, err := Generation([]byte{0xe9}); !errors.Is(err, ErrMalformed) {
		t.Errorf("Generation(e9) = %v", err)
	}
}

// katranServerID is how Katran reads the server ID of a QUIC connection ID
// of its version 2 (facebookincubator/katran, katran/lib/bpf/pckt_parsing.h,
// parse_quic): two high bits 10, then a 24-bit host ID in octets 1-3; it
// needs at least 8 octets and reads no more.
func katranServerID(cid []byte) (uint32, bool) {
	if len(cid) < 8 || cid[0]>>6 != 2 {
		return 0, false
	}
	return uint32(cid[1])<<16 | uint32(cid[2])<<8 | uint32(cid[3]), true
}

// TestKatranReadsPlaintext: with the plaintext algorithm, config rotation
// 4 or 5 and a 3-byte server ID, roamgate's IDs have the shape of Katran's
// version-2 IDs, and Katran reads the server ID from them (the README says
// so); with a key it cannot.
func TestKatranReadsPlaintext(t *testing.T) {
	for _, cr := range []uint8{4, 5} {
		c, err := NewCodec(Config{ID: cr, ServerIDLen: 3, NonceLen: 8})
		if err != nil {
			t.Fatal(err)
		}
		g, err := NewGenerator(c, []byte{0x01, 0x02, 0x03}, 1)
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			id, _ := g.GenerateConnectionID()
			if sid, ok := katranServerID(id.Bytes()); !ok || sid != 0x010203 {
				t.Fatalf("config %d: Katran reads %x from %x (%v), want 010203", cr, sid, id.Bytes(), ok)
			}
		}
	}
	c, _ := NewCodec(Config{ID: 4, ServerIDLen: 3, NonceLen: 8, Key: make([]byte, KeyLen)})
	g, _ := NewGenerator(c, []byte{0x01, 0x02, 0x03}, 0)
	differ := 0
	for range 50 {
		id, _ := g.GenerateConnectionID()
		if sid, _ := katranServerID(id.Bytes()); sid != 0x010203 {
			differ++
		}
	}
	if differ < 45 {
		t.Fatalf("with a key Katran read the server ID from %d of 50 IDs", 50-differ)
	}
}
