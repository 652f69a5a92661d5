package tlsmgr

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"

	"github.com/caddyserver/certmagic"
)

// sharedSecretKey is where shared_keys' "secret storage" keeps the secret
// in the certificate storage.
const sharedSecretKey = "roamgate/shared_secret"

// sharedSecretLen is the length of a secret made for the storage.
const sharedSecretLen = 32

// SharedSecret returns the secret of shared_keys' "secret storage": the
// one in storage, or, when there is none yet, a new random one stored
// there under the storage's lock, so that instances starting together
// agree on one.
func SharedSecret(ctx context.Context, storage certmagic.Storage) ([]byte, error) {
	if b, err := storage.Load(ctx, sharedSecretKey); err == nil {
		return checkSecret(b)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	if err := storage.Lock(ctx, sharedSecretKey); err != nil {
		return nil, fmt.Errorf("shared secret: lock: %w", err)
	}
	defer storage.Unlock(context.WithoutCancel(ctx), sharedSecretKey)
	if b, err := storage.Load(ctx, sharedSecretKey); err == nil {
		return checkSecret(b) // another instance made it meanwhile
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	b := make([]byte, sharedSecretLen)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	if err := storage.Store(ctx, sharedSecretKey, b); err != nil {
		return nil, fmt.Errorf("shared secret: %w", err)
	}
	return b, nil
}

func checkSecret(b []byte) ([]byte, error) {
	if len(b) < sharedSecretLen {
		return nil, fmt.Errorf("shared secret: the storage's %s has %d bytes, want %d or more", sharedSecretKey, len(b), sharedSecretLen)
	}
	return b, nil
}
