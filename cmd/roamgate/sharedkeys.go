package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
)

// sharedSecret resolves the Roamfile's shared_keys to its secret: as
// written, from its file, or from the certificate storage (made there by
// the first instance). nil without shared_keys.
func sharedSecret(ctx context.Context, cfg *configs.Config, tcfg tlsmgr.Config) ([]byte, error) {
	sk := cfg.SharedKeys
	switch {
	case sk == nil:
		return nil, nil
	case sk.Secret != nil:
		return sk.Secret, nil
	case sk.SecretFile != "":
		b, err := os.ReadFile(sk.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("%s: shared_keys: secret_file: %w", sk.Pos, err)
		}
		if key, ok := configs.DecodeSecret(string(b)); ok {
			b = key
		}
		if len(b) < configs.MinSharedSecretLen {
			return nil, fmt.Errorf("%s: shared_keys: secret_file %s: %d bytes: want %d or more (openssl rand -hex 32 > FILE makes one)",
				sk.Pos, sk.SecretFile, len(b), configs.MinSharedSecretLen)
		}
		return b, nil
	}
	storage, err := tlsmgr.NewStorage(tcfg)
	if err != nil {
		return nil, err
	}
	if c, ok := storage.(io.Closer); ok { // Redis: its connections
		defer c.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	b, err := tlsmgr.SharedSecret(ctx, storage)
	if err != nil {
		return nil, fmt.Errorf("%s: shared_keys: secret storage: %w", sk.Pos, err)
	}
	return b, nil
}
