package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/quiclb"
)

// cidCmd runs "roamgate cid SUBCOMMAND": connection-ID tools for operators.
func cidCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "decode" {
		fmt.Fprint(stderr, "Usage: roamgate cid decode [flags] CID...\n")
		return errUsage
	}
	return cidDecodeCmd(args[1:], stdout, stderr)
}

// cidDecodeCmd decodes QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21)
// as a load balancer would, one line per ID: its config rotation, server ID
// and process generation. An unroutable or malformed ID is reported on
// stderr and makes the command fail, after the others are decoded.
func cidDecodeCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cid decode", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: roamgate cid decode [--sid-len N --nonce-len M [--key HEX] [--config-id C] | --config Roamfile] CID...\n\n"+
			"Decodes QUIC-LB connection IDs (hex) the way a load balancer does and prints, for each,\n"+
			"its config rotation, server ID and roamgate process generation.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	sidLen := fs.Int("sid-len", 0, "server ID length in bytes")
	nonceLen := fs.Int("nonce-len", 0, "nonce length in bytes")
	key := fs.String("key", "", "the AES-128 key, 32 hex digits (none: the plaintext algorithm)")
	configID := fs.Int("config-id", 0, "the config rotation codepoint, 0-6")
	selfEncode := fs.Bool("self-encode-length", false, "the first octet encodes the length (other servers' IDs; roamgate's never do)")
	config := fs.String("config", "", "read the settings from this Roamfile's quic_lb block instead")
	helpOutput(fs, args, stdout, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "roamgate cid decode: want one or more connection IDs")
		fs.Usage()
		return errUsage
	}
	var cfg quiclb.Config
	if *config != "" {
		var set []string
		fs.Visit(func(f *flag.Flag) {
			if f.Name != "config" {
				set = append(set, "--"+f.Name)
			}
		})
		if len(set) > 0 {
			return fmt.Errorf("cid decode: --config gives every setting; drop %s", strings.Join(set, ", "))
		}
		rc, err := configs.Load(*config)
		if err != nil {
			return err
		}
		if rc.QUICLB == nil {
			return fmt.Errorf("cid decode: %s has no quic_lb block: its connection IDs are unroutable (config rotation 7)", *config)
		}
		cfg = proxy.CIDConfig(rc.QUICLB)
	} else {
		if *sidLen == 0 || *nonceLen == 0 {
			return errors.New("cid decode: want --sid-len and --nonce-len (or --config)")
		}
		if *configID < 0 || *configID > quiclb.MaxConfigID {
			return fmt.Errorf("cid decode: --config-id %d: want 0-%d (%d marks unroutable IDs)", *configID, quiclb.MaxConfigID, quiclb.Unroutable)
		}
		cfg = quiclb.Config{ID: uint8(*configID), ServerIDLen: *sidLen, NonceLen: *nonceLen, SelfEncodeLength: *selfEncode}
		if *key != "" {
			k, err := hex.DecodeString(*key)
			if err != nil || len(k) != quiclb.KeyLen {
				return fmt.Errorf("cid decode: --key: want %d hex digits (an AES-128 key)", 2*quiclb.KeyLen)
			}
			cfg.Key = k
		}
	}
	codec, err := quiclb.NewCodec(cfg)
	if err != nil {
		return fmt.Errorf("cid decode: %w", err)
	}
	failed := 0
	for _, arg := range fs.Args() {
		line, err := decodeCID(codec, arg)
		if err != nil {
			fmt.Fprintf(stderr, "roamgate cid decode: %s: %v\n", arg, err)
			failed++
			continue
		}
		fmt.Fprintln(stdout, line)
	}
	if failed > 0 {
		return fmt.Errorf("cid decode: %d of %d connection IDs unroutable or malformed", failed, fs.NArg())
	}
	return nil
}

// decodeCID returns the output line for one connection ID written in hex.
func decodeCID(codec *quiclb.Codec, s string) (string, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(s), "0x"))
	if err != nil {
		return "", fmt.Errorf("%w: not hex", quiclb.ErrMalformed)
	}
	d, err := codec.Decode(b)
	if err != nil {
		if gen, gerr := quiclb.Generation(b); errors.Is(err, quiclb.ErrUnroutable) && gerr == nil && b[0]>>5 == quiclb.Unroutable {
			return "", fmt.Errorf("%w; generation %d", err, gen)
		}
		return "", err
	}
	gen := "none"
	if d.Generation != quiclb.NoGeneration {
		gen = fmt.Sprint(d.Generation)
	}
	return fmt.Sprintf("%x config_id=%d server_id=%x generation=%s", b, d.ConfigID, d.ServerID, gen), nil
}
