package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bsm/redislock"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Defaults of Options.
const (
	DefaultKeyPrefix   = "roamgate"
	DefaultDialTimeout = 5 * time.Second
	// DefaultLockTTL is how long a lock outlives its holder's last
	// extension: certmagic's FileStorage takes a lock over once its file
	// has not been refreshed for 10 s, and so does this. A holder extends
	// its locks every third of it.
	DefaultLockTTL = 10 * time.Second
)

// Operations, the values of the op label of Options.Errors.
var ops = []string{"store", "load", "delete", "exists", "list", "stat", "lock", "refresh", "unlock"}

// Hash fields of a stored value.
const (
	fieldData     = "d" // the value's bytes
	fieldModified = "m" // when it was stored: Unix nanoseconds, decimal
)

// scanCount is the COUNT hint of each SCAN call.
const scanCount = 1000

// Options configures a Storage.
type Options struct {
	// Address is the Redis server's "host:port". Required.
	Address string
	// DB is the database number (SELECT); 0 by default.
	DB int
	// Username and Password authenticate (AUTH): Password alone for
	// requirepass, both for an ACL user. Empty: no AUTH.
	Username, Password string
	// TLS, when set, is the configuration of TLS to the server; nil means
	// plain TCP.
	TLS *tls.Config
	// DialTimeout bounds connecting to the server; DefaultDialTimeout
	// when 0.
	DialTimeout time.Duration

	// KeyPrefix starts every Redis key of the storage: values are
	// "PREFIX:k:KEY", locks "PREFIX:lock:NAME". DefaultKeyPrefix when
	// empty. Instances that share certificates share the address, DB and
	// prefix; other prefixes keep other fleets apart on one server.
	KeyPrefix string

	// LockTTL is how long a lock lives after its holder's last extension
	// (see DefaultLockTTL, which applies when 0); at least 100ms. The
	// holder extends it every LockTTL/3, and waiters poll at least every
	// LockTTL/4.
	LockTTL time.Duration

	// Errors, when set, counts the errors of Redis commands by operation
	// ("store", "load", "delete", "exists", "list", "stat", "lock",
	// "refresh", "unlock"); a missing key is not an error.
	Errors *prometheus.CounterVec
}

// Storage is a certmagic.Storage in Redis. Create it with New; Close
// releases its locks and its connections. It is safe for concurrent use.
//
// certmagic names a lock, not a holder, in Unlock: a Storage holds each
// name once, and its Lock of a name it holds already waits for the
// Unlock, as another instance's would.
type Storage struct {
	client  *redis.Client
	locker  *redislock.Client
	logger  *zap.Logger
	errors  *prometheus.CounterVec // nil: not counted
	data    string                 // "PREFIX:k:"
	locks   string                 // "PREFIX:lock:"
	lockTTL time.Duration
	addr    string

	closed    chan struct{} // closed by Close: refreshers stop
	closeOnce sync.Once

	mu   sync.Mutex // guards the following
	held map[string]*heldLock

	lockLog logLimiter // the errors of waiting for locks
}

// heldLock is a lock this Storage holds, kept alive by its refresher.
type heldLock struct {
	lock *redislock.Lock
	stop chan struct{} // closed by Unlock or Close
	done chan struct{} // closed when the refresher has exited
	lost chan struct{} // closed by the refresher when the lock expired under it
}

var (
	_ certmagic.Storage   = (*Storage)(nil)
	_ certmagic.TryLocker = (*Storage)(nil)
)

// New returns a Storage for opts. It does not connect: commands dial as
// they need connections, so that a server that is down at start does not
// stop roamgate from serving (certmagic retries). A nil logger discards
// logs.
func New(opts Options, logger *zap.Logger) (*Storage, error) {
	if opts.Address == "" {
		return nil, errors.New("redis storage: no address")
	}
	if opts.DB < 0 {
		return nil, fmt.Errorf("redis storage: database %d is negative", opts.DB)
	}
	if opts.LockTTL == 0 {
		opts.LockTTL = DefaultLockTTL
	}
	if opts.LockTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("redis storage: lock ttl %s is shorter than 100ms", opts.LockTTL)
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = DefaultKeyPrefix
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	routeRedisLog(logger)
	client := redis.NewClient(&redis.Options{
		Addr:        opts.Address,
		Username:    opts.Username,
		Password:    opts.Password,
		DB:          opts.DB,
		TLSConfig:   opts.TLS,
		DialTimeout: opts.DialTimeout,
		// One dial per attempt and one retry: a server that is down fails
		// a command within a second or two, and the caller (certmagic, or
		// Lock's loop) decides when to try again.
		DialerRetries:         1,
		MaxRetries:            1,
		ContextTimeoutEnabled: true,
		// Neither CLIENT SETINFO nor the maintenance notifications of
		// Redis Enterprise: an open-source server before 7.2 refuses the
		// first, and neither is of use here.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	s := &Storage{
		client:  client,
		locker:  redislock.New(client),
		logger:  logger,
		errors:  opts.Errors,
		data:    opts.KeyPrefix + ":k:",
		locks:   opts.KeyPrefix + ":lock:",
		lockTTL: opts.LockTTL,
		addr:    opts.Address,
		closed:  make(chan struct{}),
		held:    make(map[string]*heldLock),
	}
	if s.errors != nil {
		for _, op := range ops {
			s.errors.WithLabelValues(op) // exported at 0 from the start
		}
	}
	return s, nil
}

// String describes the storage for logs: "redis://HOST:PORT/DB PREFIX".
func (s *Storage) String() string {
	return fmt.Sprintf("redis://%s/%d %s", s.addr, s.client.Options().DB, strings.TrimSuffix(s.data, ":k:"))
}

// Ping checks that the server answers (and accepts the credentials).
func (s *Storage) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis storage %s: %w", s.addr, err)
	}
	return nil
}

// Close releases the locks this Storage holds (waiting at most a second
// for the server), stops extending them and closes the connections.
// Commands after Close fail. Close is idempotent.
func (s *Storage) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		s.mu.Lock()
		held := s.held
		s.held = make(map[string]*heldLock)
		s.mu.Unlock()
		for name, h := range held {
			<-h.done
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if rerr := h.lock.Release(ctx); rerr != nil && !errors.Is(rerr, redislock.ErrLockNotHeld) {
				s.fail("unlock", name, rerr)
			}
			cancel()
		}
		err = s.client.Close()
	})
	return err
}

// Store puts value at key, with the current time, in one HSET.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := s.client.HSet(ctx, s.data+key, fieldData, value, fieldModified, now).Err(); err != nil {
		return s.fail("store", key, err)
	}
	return nil
}

// Load returns the value at key, or an error that is fs.ErrNotExist when
// there is none.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := s.client.HGet(ctx, s.data+key, fieldData).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("load %q: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, s.fail("load", key, err)
	}
	return b, nil
}

// Delete deletes key and every key under it (key + "/..."), as removing a
// directory would. A key that does not exist is no error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := s.client.Del(ctx, s.data+key).Err(); err != nil {
		return s.fail("delete", key, err)
	}
	var batch []string
	err := s.scan(ctx, key, func(k string) bool {
		batch = append(batch, k)
		return true
	})
	for err == nil && len(batch) > 0 {
		n := min(len(batch), scanCount)
		err = s.client.Del(ctx, batch[:n]...).Err()
		batch = batch[n:]
	}
	if err != nil {
		return s.fail("delete", key, err)
	}
	return nil
}

// Exists reports whether key exists, as a value or as the prefix of
// others (a directory). An error reads as false, and is logged.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	n, err := s.client.Exists(ctx, s.data+key).Result()
	if err != nil {
		_ = s.fail("exists", key, err)
		return false
	}
	if n > 0 {
		return true
	}
	dir, err := s.isDir(ctx, key)
	if err != nil {
		_ = s.fail("exists", key, err)
	}
	return dir
}

// List returns the keys under path: with recursive, every key below it;
// otherwise its direct children, values and directories, as listing a
// directory would. The keys are sorted and start with path + "/". A path
// with nothing under it that is no value either gives fs.ErrNotExist.
func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	path = strings.TrimSuffix(path, "/")
	seen := make(map[string]bool)
	err := s.scan(ctx, path, func(k string) bool {
		k = strings.TrimPrefix(k, s.data)
		if !recursive {
			rest := strings.TrimPrefix(k, path+"/")
			if path == "" {
				rest = k
			}
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				k = k[:len(k)-len(rest)+i]
			}
		}
		seen[k] = true
		return true
	})
	if err != nil {
		return nil, s.fail("list", path, err)
	}
	if recursive {
		// The directories between path and each key, as filepath.Walk
		// (certmagic's FileStorage) lists them too.
		for k := range seen {
			for i := len(path) + 1; i < len(k); i++ {
				if k[i] == '/' {
					seen[k[:i]] = true
				}
			}
		}
	}
	if len(seen) == 0 {
		n, err := s.client.Exists(ctx, s.data+path).Result()
		if err != nil {
			return nil, s.fail("list", path, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("list %q: %w", path, fs.ErrNotExist)
		}
		return nil, nil // a value, which has no children
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// Stat describes key: a value's size and modification time, or a
// directory (IsTerminal false) when keys exist under it; fs.ErrNotExist
// when neither.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	var size *redis.IntCmd
	var modified *redis.StringCmd
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		size = p.HStrLen(ctx, s.data+key, fieldData)
		modified = p.HGet(ctx, s.data+key, fieldModified)
		return nil
	})
	info := certmagic.KeyInfo{Key: key}
	switch {
	case errors.Is(err, redis.Nil): // no value: perhaps a directory
		dir, err := s.isDir(ctx, key)
		if err != nil {
			return info, s.fail("stat", key, err)
		}
		if !dir {
			return info, fmt.Errorf("stat %q: %w", key, fs.ErrNotExist)
		}
		return info, nil
	case err != nil:
		return info, s.fail("stat", key, err)
	}
	ns, err := strconv.ParseInt(modified.Val(), 10, 64)
	if err != nil {
		return info, s.fail("stat", key, fmt.Errorf("modification time %q: %w", modified.Val(), err))
	}
	info.Size, info.Modified, info.IsTerminal = size.Val(), time.Unix(0, ns), true
	return info, nil
}

// isDir reports whether some key is under key + "/".
func (s *Storage) isDir(ctx context.Context, key string) (bool, error) {
	found := false
	err := s.scan(ctx, key, func(string) bool {
		found = true
		return false
	})
	return found, err
}

// scan calls fn with each Redis key under dir + "/" (every data key when
// dir is empty) until fn returns false. A key may be seen twice (SCAN
// guarantees only that keys present throughout are seen).
func (s *Storage) scan(ctx context.Context, dir string, fn func(redisKey string) bool) error {
	pattern := globEscape(s.data) + "*"
	if dir = strings.TrimSuffix(dir, "/"); dir != "" {
		pattern = globEscape(s.data+dir+"/") + "*"
	}
	var cursor uint64
	for {
		keys, next, err := s.client.Scan(ctx, cursor, pattern, scanCount).Result()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if !fn(k) {
				return nil
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// globEscape escapes the characters that SCAN's MATCH pattern treats
// specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\*?[]^-`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fail counts and logs the error of a command of op on key, and returns
// it wrapped.
func (s *Storage) fail(op, key string, err error) error {
	if s.errors != nil {
		s.errors.WithLabelValues(op).Inc()
	}
	if op != "lock" { // Lock logs its own, rate-limited
		s.logger.Error("redis storage", zap.String("op", op), zap.String("key", key), zap.Error(err))
	}
	return fmt.Errorf("redis storage: %s %q: %w", op, key, err)
}
