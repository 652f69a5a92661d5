package quiclb

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
)

// Limits of a configuration (draft -21 §5.3, "Configuration Agent Actions").
const (
	// MaxConfigID is the highest config rotation codepoint a configuration
	// may use; Unroutable (0b111) is reserved.
	MaxConfigID = 6
	// Unroutable is the config rotation codepoint of connection IDs that no
	// load balancer can decode (draft -21 §3.2): roamgate's without quic_lb.
	Unroutable = 7
	// MinNonceLen is the draft's shortest nonce, in bytes. Generators need
	// MinRandomNonceLen.
	MinNonceLen = 4
	// MaxPlaintextLen bounds server ID plus nonce, in bytes: QUIC v1
	// connection IDs are at most 20 bytes, the first octet included.
	MaxPlaintextLen = 19
	// KeyLen is the length of an AES-128 key.
	KeyLen = 16
)

// Sentinel errors of Decode, for errors.Is.
var (
	// ErrUnroutable: the first octet names no configuration of the decoder
	// (config rotation 7 always; another codepoint than the Codec's).
	ErrUnroutable = errors.New("unroutable connection ID")
	// ErrMalformed: the connection ID cannot be one of the configuration's
	// (wrong length, or a self-encoded length that disagrees).
	ErrMalformed = errors.New("malformed connection ID")
)

// Config is one QUIC-LB configuration: the parameters a load balancer and
// its servers share for one config rotation codepoint (the YANG model's
// ietf-quic-lb-server without the server ID, draft -21 Appendix A).
type Config struct {
	// ID is the config rotation codepoint written in the first octet's
	// three high bits, 0 to MaxConfigID.
	ID uint8
	// ServerIDLen is the length of server IDs in bytes, at least 1.
	ServerIDLen int
	// NonceLen is the length of the nonce in bytes, at least MinNonceLen;
	// ServerIDLen+NonceLen is at most MaxPlaintextLen.
	NonceLen int
	// Key is the AES-128 key of the encrypted algorithms, KeyLen bytes;
	// nil means the plaintext algorithm, where anyone can read the server
	// ID. With a key, ServerIDLen+NonceLen == 16 selects the single-pass
	// algorithm, any other sum the four-pass one.
	Key []byte
	// SelfEncodeLength writes the connection ID's length minus one in the
	// first octet's five low bits (draft -21 §3.3). Off, those bits are
	// random apart from the process generation (see the package doc).
	SelfEncodeLength bool
}

// Len returns the length of the configuration's connection IDs: the first
// octet, the server ID and the nonce.
func (c Config) Len() int { return 1 + c.ServerIDLen + c.NonceLen }

// Check reports the first of the draft's constraints that c breaks.
func (c Config) Check() error {
	switch {
	case c.ID > MaxConfigID:
		return fmt.Errorf("config ID %d out of range (want 0-%d; %d means unroutable)", c.ID, MaxConfigID, Unroutable)
	case c.ServerIDLen < 1:
		return fmt.Errorf("server ID length %d: want at least 1 byte", c.ServerIDLen)
	case c.NonceLen < MinNonceLen:
		return fmt.Errorf("nonce length %d: want at least %d bytes", c.NonceLen, MinNonceLen)
	case c.ServerIDLen+c.NonceLen > MaxPlaintextLen:
		return fmt.Errorf("server ID length %d plus nonce length %d is %d: want at most %d bytes (connection IDs are at most 20 bytes)",
			c.ServerIDLen, c.NonceLen, c.ServerIDLen+c.NonceLen, MaxPlaintextLen)
	case c.Key != nil && len(c.Key) != KeyLen:
		return fmt.Errorf("key of %d bytes: want %d (AES-128)", len(c.Key), KeyLen)
	}
	return nil
}

// Algorithm names the draft's algorithm c selects: "plaintext",
// "single-pass" or "four-pass".
func (c Config) Algorithm() string {
	switch {
	case c.Key == nil:
		return "plaintext"
	case c.ServerIDLen+c.NonceLen == aes.BlockSize:
		return "single-pass"
	}
	return "four-pass"
}

// CID is a decoded connection ID.
type CID struct {
	ConfigID uint8
	ServerID []byte
	Nonce    []byte
	// Generation is the process generation of the first octet's two low
	// bits, 0 to MaxGeneration; NoGeneration when the configuration
	// self-encodes the length.
	Generation int
}

// Codec encodes and decodes the connection IDs of one Config. It is safe for
// concurrent use.
type Codec struct {
	cfg   Config
	block cipher.Block // nil for the plaintext algorithm
}

// NewCodec returns a Codec for cfg, after checking it.
func NewCodec(cfg Config) (*Codec, error) {
	if err := cfg.Check(); err != nil {
		return nil, fmt.Errorf("quic-lb config: %w", err)
	}
	c := &Codec{cfg: cfg}
	if cfg.Key != nil {
		c.cfg.Key = append([]byte(nil), cfg.Key...)
		block, err := aes.NewCipher(c.cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("quic-lb key: %w", err)
		}
		c.block = block
	}
	return c, nil
}

// Config returns the codec's configuration.
func (c *Codec) Config() Config { return c.cfg }

// Encode returns the connection ID of serverID and nonce, which must have
// the configuration's lengths. The first octet is the config rotation
// codepoint and either the self-encoded length or low5's five low bits
// (random bits and the generation, as the caller chose them).
func (c *Codec) Encode(serverID, nonce []byte, low5 byte) ([]byte, error) {
	cid := make([]byte, c.cfg.Len())
	if err := c.encode(cid, serverID, nonce, low5); err != nil {
		return nil, err
	}
	return cid, nil
}

// encode is Encode into cid, which has the configuration's length.
func (c *Codec) encode(cid, serverID, nonce []byte, low5 byte) error {
	if len(serverID) != c.cfg.ServerIDLen || len(nonce) != c.cfg.NonceLen {
		return fmt.Errorf("quic-lb encode: server ID of %d bytes and nonce of %d: want %d and %d",
			len(serverID), len(nonce), c.cfg.ServerIDLen, c.cfg.NonceLen)
	}
	if c.cfg.SelfEncodeLength {
		low5 = byte(len(cid) - 1)
	}
	cid[0] = c.cfg.ID<<5 | low5&0x1f
	pt := cid[1:]
	copy(pt, serverID)
	copy(pt[len(serverID):], nonce)
	switch {
	case c.block == nil: // plaintext, draft -21 §5.4
	case len(pt) == aes.BlockSize: // §5.4.1
		c.block.Encrypt(pt, pt)
	default: // §5.4.2
		c.fourPass(pt, true)
	}
	return nil
}

// Decode returns the server ID, nonce and generation of cid. It fails with
// ErrUnroutable when cid's config rotation codepoint is not the Codec's,
// and with ErrMalformed when cid does not have the configuration's length
// (roamgate appends no bytes of its own) or its self-encoded length
// disagrees.
func (c *Codec) Decode(cid []byte) (CID, error) {
	if len(cid) == 0 {
		return CID{}, fmt.Errorf("%w: empty", ErrMalformed)
	}
	cr := cid[0] >> 5
	switch {
	case cr == Unroutable:
		return CID{}, fmt.Errorf("%w: config rotation %d (a server without a QUIC-LB configuration)", ErrUnroutable, Unroutable)
	case cr != c.cfg.ID:
		return CID{}, fmt.Errorf("%w: config rotation %d, not the configuration's %d", ErrUnroutable, cr, c.cfg.ID)
	case len(cid) != c.cfg.Len():
		return CID{}, fmt.Errorf("%w: %d bytes, want %d (1 + server ID %d + nonce %d)", ErrMalformed, len(cid), c.cfg.Len(), c.cfg.ServerIDLen, c.cfg.NonceLen)
	case c.cfg.SelfEncodeLength && int(cid[0]&0x1f) != len(cid)-1:
		return CID{}, fmt.Errorf("%w: self-encoded length %d, want %d", ErrMalformed, cid[0]&0x1f, len(cid)-1)
	}
	pt := append([]byte(nil), cid[1:]...)
	switch {
	case c.block == nil:
	case len(pt) == aes.BlockSize:
		c.block.Decrypt(pt, pt)
	default:
		c.fourPass(pt, false)
	}
	d := CID{ConfigID: cr, ServerID: pt[:c.cfg.ServerIDLen:c.cfg.ServerIDLen], Nonce: pt[c.cfg.ServerIDLen:], Generation: NoGeneration}
	if !c.cfg.SelfEncodeLength {
		d.Generation = int(cid[0] & generationMask)
	}
	return d, nil
}

// fourPass encrypts (or decrypts) b, the server ID and nonce, in place
// with the four-pass Feistel network of draft -21 §5.4.2 (decryption:
// §5.5.2, all four passes, as the nonce is wanted too).
func (c *Codec) fourPass(b []byte, encrypt bool) {
	n := len(b)
	half := (n + 1) / 2
	odd := n%2 == 1
	var left, right [10]byte // half is at most 10 (n ≤ 19)
	l, r := left[:half], right[:half]
	copy(l, b[:half])
	copy(r, b[n-half:])
	if odd {
		l[half-1] &= 0xf0 // left_0 clears its last four bits,
		r[0] &= 0x0f      // right_0 its first four
	}
	var in, out [aes.BlockSize]byte
	// round XORs dst with the first half bytes of AES(expand(n, pass, src))
	// and clears dst's shared nibble.
	round := func(dst, src []byte, pass byte, clearLast bool) {
		in = [aes.BlockSize]byte{}
		copy(in[:], src)
		in[14], in[15] = byte(n), pass
		c.block.Encrypt(out[:], in[:])
		for i := range dst {
			dst[i] ^= out[i]
		}
		switch {
		case odd && clearLast:
			dst[half-1] &= 0xf0
		case odd:
			dst[0] &= 0x0f
		}
	}
	if encrypt {
		round(r, l, 1, false) // right_1
		round(l, r, 2, true)  // left_1
		round(r, l, 3, false) // right_2
		round(l, r, 4, true)  // left_2
	} else {
		round(l, r, 4, true)  // left_1
		round(r, l, 3, false) // right_1
		round(l, r, 2, true)  // left_0
		round(r, l, 1, false) // right_0
	}
	copy(b, l)
	if odd {
		b[half-1] |= r[0] // the middle octet: left's high nibble, right's low
		copy(b[half:], r[1:])
	} else {
		copy(b[half:], r)
	}
}
