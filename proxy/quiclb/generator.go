package quiclb

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"
)

// The process generation (see the package doc).
const (
	// GenerationBits is how many bits of a connection ID carry the process
	// generation.
	GenerationBits = 2
	// MaxGeneration is the highest generation; a new process takes the one
	// after its predecessor's, modulo MaxGeneration+1.
	MaxGeneration = 1<<GenerationBits - 1
	// NoGeneration is CID.Generation when the first octet self-encodes the
	// length and so holds no generation.
	NoGeneration = -1

	generationMask = MaxGeneration
)

// MinRandomNonceLen is the shortest nonce a Generator accepts, in bytes:
// its nonces are random, and quic-go cannot detect that a new connection ID
// duplicates one in use (it misroutes the packets of one of the two
// connections). With n random bytes a new ID equals one of A IDs active on
// the server with probability A/2^(8n): for n = 8 and a million active IDs
// (some 150,000 connections of up to 7 IDs each), 5.4e-14 per ID, one
// collision in about 1.8e13 IDs issued (57 years at 10,000 a second). The
// draft also forbids reusing a nonce under one key (§9.6); a random nonce of
// n bytes repeats after about 2^(4n) IDs (2^32 for n = 8), so a busy fleet
// with a key should use longer nonces (12 bytes: 2^48) or rotate keys.
const MinRandomNonceLen = 8

// UnroutableLen is the length of the connection IDs a Generator without a
// Codec issues: the first octet (config rotation 7, self-encoded length 9),
// an octet of six random bits and the generation, and 8 random bytes: 70
// random bits, as collision-proof as a MinRandomNonceLen nonce.
const UnroutableLen = 10

// Generator issues roamgate's server connection IDs: every one the server
// gives out (the Initial's source connection ID, a Retry's, every
// NEW_CONNECTION_ID) through quic.Transport.ConnectionIDGenerator, so all
// of them route to this server and this process. It is safe for concurrent
// use: quic-go calls it from every connection's goroutine.
type Generator struct {
	codec      *Codec // nil: unroutable connection IDs
	serverID   []byte
	generation uint8
}

var _ quic.ConnectionIDGenerator = (*Generator)(nil)

// NewGenerator returns a Generator of connection IDs that codec decodes to
// serverID, with random nonces of at least MinRandomNonceLen bytes and, in
// the first octet, the process generation (0 to MaxGeneration). A nil codec
// (no quic_lb configured) gives unroutable IDs of UnroutableLen bytes that
// still carry the generation; serverID is then ignored. codec must not
// self-encode the length: the generation lives in those bits.
func NewGenerator(codec *Codec, serverID []byte, generation int) (*Generator, error) {
	if generation < 0 || generation > MaxGeneration {
		return nil, fmt.Errorf("quic-lb generator: generation %d out of range (want 0-%d)", generation, MaxGeneration)
	}
	g := &Generator{codec: codec, generation: uint8(generation)}
	if codec == nil {
		return g, nil
	}
	cfg := codec.Config()
	switch {
	case len(serverID) != cfg.ServerIDLen:
		return nil, fmt.Errorf("quic-lb generator: server ID of %d bytes, want %d", len(serverID), cfg.ServerIDLen)
	case cfg.NonceLen < MinRandomNonceLen:
		return nil, fmt.Errorf("quic-lb generator: nonce length %d: want at least %d bytes, as nonces are random", cfg.NonceLen, MinRandomNonceLen)
	case cfg.SelfEncodeLength:
		return nil, errors.New("quic-lb generator: a self-encoded length leaves no bits for the process generation")
	}
	g.serverID = bytes.Clone(serverID)
	return g, nil
}

// Generation returns the process generation in the IDs g issues.
func (g *Generator) Generation() int { return int(g.generation) }

// ServerID returns the server ID g encodes; nil for unroutable IDs.
func (g *Generator) ServerID() []byte { return bytes.Clone(g.serverID) }

// ConnectionIDLen returns the length of every ID g issues.
func (g *Generator) ConnectionIDLen() int {
	if g.codec == nil {
		return UnroutableLen
	}
	return g.codec.cfg.Len()
}

// GenerateConnectionID returns a new connection ID with a random nonce.
func (g *Generator) GenerateConnectionID() (quic.ConnectionID, error) {
	var b [1 + MaxPlaintextLen]byte
	if g.codec == nil {
		id := b[:UnroutableLen]
		if _, err := rand.Read(id[1:]); err != nil {
			return quic.ConnectionID{}, fmt.Errorf("quic-lb: random connection ID: %w", err)
		}
		id[0] = Unroutable<<5 | (UnroutableLen - 1)
		id[1] = id[1]&^generationMask | g.generation
		return quic.ConnectionIDFromBytes(id), nil
	}
	cfg := &g.codec.cfg
	// b holds the random first-octet bits, then the nonce; encode writes
	// the ID over them in place.
	rnd := b[:1+cfg.NonceLen]
	if _, err := rand.Read(rnd); err != nil {
		return quic.ConnectionID{}, fmt.Errorf("quic-lb: random nonce: %w", err)
	}
	var nonce [MaxPlaintextLen]byte
	copy(nonce[:], rnd[1:])
	low5 := rnd[0]&0x1f&^generationMask | g.generation
	id := b[:cfg.Len()]
	if err := g.codec.encode(id, g.serverID, nonce[:cfg.NonceLen], low5); err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(id), nil
}

// Generation returns the process generation of a connection ID roamgate
// issued, read the way an SO_REUSEPORT program routing a binary upgrade
// reads it (issue 14), without keys or configuration: the second octet's
// low bits when the config rotation is 7 (an unroutable ID, whose first
// octet self-encodes the length as the draft requires), else the first
// octet's. Every quic_lb configuration roamgate accepts leaves the length
// unencoded.
func Generation(cid []byte) (int, error) {
	switch {
	case len(cid) == 0:
		return 0, fmt.Errorf("%w: empty", ErrMalformed)
	case cid[0]>>5 != Unroutable:
		return int(cid[0] & generationMask), nil
	case len(cid) < 2:
		return 0, fmt.Errorf("%w: unroutable ID of %d byte", ErrMalformed, len(cid))
	}
	return int(cid[1] & generationMask), nil
}
