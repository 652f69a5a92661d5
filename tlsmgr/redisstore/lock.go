package redisstore

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"go.uber.org/zap"
)

// minLockPoll is the first wait of Lock between two tries; it doubles up to
// a quarter of the lock TTL, and at most maxLockPoll.
const (
	minLockPoll = 25 * time.Millisecond
	maxLockPoll = time.Second
)

// Lock takes the lock name, waiting until it is free (released, or expired
// after its holder stopped extending it) or ctx is done. While the server
// cannot be reached it keeps trying, logging the first error and every
// 30 s after; each failed command is counted. The lock is extended every
// LockTTL/3 until Unlock or Close.
func (s *Storage) Lock(ctx context.Context, name string) error {
	wait := minLockPoll
	failing := false
	for {
		ok, err := s.TryLock(ctx, name)
		switch {
		case ok:
			if failing {
				s.logger.Info("redis storage: lock acquired after errors", zap.String("lock", name))
			}
			return nil
		case err != nil && ctx.Err() == nil:
			failing = true
			if s.lockLog.allow() {
				s.logger.Error("redis storage: waiting for lock", zap.String("lock", name), zap.Error(err))
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("lock %q: %w", name, ctx.Err())
		case <-s.closed:
			t.Stop()
			return fmt.Errorf("lock %q: storage closed", name)
		case <-t.C:
		}
		wait = min(2*wait, s.lockTTL/4, maxLockPoll)
	}
}

// TryLock takes the lock name if it is free, and reports whether it did.
// A name this Storage holds already is not free.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	select {
	case <-s.closed:
		return false, fmt.Errorf("lock %q: storage closed", name)
	default:
	}
	l, err := s.locker.Obtain(ctx, s.locks+name, s.lockTTL, nil)
	switch {
	case errors.Is(err, redislock.ErrNotObtained):
		return false, nil
	case err != nil:
		return false, s.fail("lock", name, err)
	}
	h := &heldLock{lock: l, stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	s.mu.Lock()
	select {
	case <-s.closed: // Close ran meanwhile, and would not release it
		s.mu.Unlock()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = l.Release(rctx)
		return false, fmt.Errorf("lock %q: storage closed", name)
	default:
	}
	s.held[name] = h
	s.mu.Unlock()
	go s.refresh(name, h)
	return true, nil
}

// Unlock releases the lock name, which this Storage must hold (or held
// when Close released it: that is no error). It fails
// when the server cannot be reached (the lock then expires after LockTTL)
// or when the lock had expired, after the server could not be reached for
// a LockTTL, and may have been taken by another instance meanwhile.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		select {
		case <-s.closed:
			return nil // Close released it (certmagic's workers unlock after Stop)
		default:
		}
		return fmt.Errorf("unlock %q: not locked by this storage", name)
	}
	close(h.stop)
	<-h.done
	select {
	case <-h.lost:
		return fmt.Errorf("unlock %q: the lock expired while held (the server was unreachable for its ttl, %s)", name, s.lockTTL)
	default:
	}
	err := h.lock.Release(ctx)
	switch {
	case errors.Is(err, redislock.ErrLockNotHeld):
		return fmt.Errorf("unlock %q: the lock expired while held (the server was unreachable for its ttl, %s)", name, s.lockTTL)
	case err != nil:
		return s.fail("unlock", name, err)
	}
	return nil
}

// refresh extends the lock h every LockTTL/3 until it is released or
// lost. It owns h.done.
func (s *Storage) refresh(name string, h *heldLock) {
	defer close(h.done)
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("redis storage: lock refresher panicked", zap.String("lock", name),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		}
	}()
	every := s.lockTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-s.closed:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := h.lock.Refresh(ctx, s.lockTTL, nil)
		cancel()
		switch {
		case errors.Is(err, redislock.ErrNotObtained):
			// Gone, or someone else's now: it expired while the server
			// could not be reached. The holder learns it at Unlock.
			s.count("refresh")
			s.logger.Error("redis storage: lock expired while held", zap.String("lock", name), zap.Duration("ttl", s.lockTTL))
			close(h.lost)
			return
		case err != nil:
			_ = s.fail("refresh", name, err) // tried again at the next tick
		}
	}
}

// count counts one error of op.
func (s *Storage) count(op string) {
	if s.errors != nil {
		s.errors.WithLabelValues(op).Inc()
	}
}

// logLimiter lets one log line through, then one every 30 s.
type logLimiter struct {
	mu   sync.Mutex // guards last
	last time.Time
}

func (l *logLimiter) allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); l.last.IsZero() || now.Sub(l.last) >= 30*time.Second {
		l.last = now
		return true
	}
	return false
}
