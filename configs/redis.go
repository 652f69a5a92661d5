package configs

import (
	"net"
	"slices"
	"strconv"
	"time"
)

// Defaults of "storage redis".
const (
	DefaultRedisKeyPrefix   = "roamgate"
	DefaultRedisDialTimeout = 5 * time.Second
	DefaultRedisLockTTL     = 10 * time.Second
	MinRedisLockTTL         = time.Second
)

// RedisStorage is the global "storage redis { ... }" option: certificates,
// ACME accounts, the local CA and shared_keys' "secret storage" live in
// Redis, shared by every instance that names the same server, db and
// key_prefix, which lock each other out of ordering a certificate twice:
//
//	storage redis {
//		address HOST:PORT        # required
//		db N                     # default 0
//		username U               # an ACL user; default none (requirepass)
//		password {$ENV}          # or password_file PATH (one of them, or none)
//		key_prefix P             # default roamgate
//		tls on|off               # default off
//		tls_ca FILE              # with tls on: roots for the server's certificate; default the system's
//		tls_server_name N        # with tls on: the name to check in it; default the address's host
//		dial_timeout D           # default 5s
//		lock_ttl D               # default 10s, at least 1s
//	}
//
// The data directory (data_dir) still holds what is each instance's own:
// the control socket, and the lb_policy cookie key unless shared_keys
// sets one.
type RedisStorage struct {
	Pos     Position // the storage token
	Address string   // "host:port" as written (IPv6 in brackets)
	DB      int      // 0 or more
	// Username and Password authenticate (AUTH). Password is as written,
	// after {$ENV} substitution; PasswordFile names a file that holds it
	// instead (read at start, a trailing newline dropped). At most one of
	// the two is set.
	Username     string
	Password     string
	PasswordFile File
	KeyPrefix    string // default DefaultRedisKeyPrefix
	// TLS turns on TLS to the server; TLSCA (a PEM file, as written) and
	// TLSServerName, which Parse accepts only with TLS, replace the system
	// roots and the address's host in checking its certificate.
	TLS           bool
	TLSCA         File
	TLSServerName string
	DialTimeout   time.Duration // default DefaultRedisDialTimeout
	// LockTTL is how long a certificate lock outlives its holder's last
	// extension: how long a crashed instance's order blocks the others.
	LockTTL time.Duration // default DefaultRedisLockTTL, at least MinRedisLockTTL
}

var redisOptions = []string{"address", "db", "username", "password", "password_file", "key_prefix", "tls", "tls_ca", "tls_server_name", "dial_timeout", "lock_ttl"}

// redisStorage reads the block of "storage redis", with the cursor on
// redis.
func redisStorage(b *builder, c *Cursor, pos Position) error {
	module := c.Token()
	if c.NextArg() {
		return c.Errf("unexpected argument %q (want storage redis { address HOST:PORT ... })", c.Val())
	}
	if !c.opensBlock() {
		return newError(module.Pos(), "storage", nil, "redis needs a block (want storage redis { address HOST:PORT ... })")
	}
	r := &RedisStorage{Pos: pos, KeyPrefix: DefaultRedisKeyPrefix, DialTimeout: DefaultRedisDialTimeout, LockTTL: DefaultRedisLockTTL}
	seen := make(map[string]Position)
	for c.NextBlock(0) {
		b.report(redisSubdirective(c, r, seen))
	}
	_, hasPassword := seen["password"]
	_, hasFile := seen["password_file"]
	switch {
	case seen["address"] == (Position{}):
		return newError(module.Pos(), "storage", nil, "redis: address required (want address HOST:PORT)")
	case hasPassword && hasFile:
		return newError(seen["password_file"], "storage", nil, "password_file: the password is set already at "+seen["password"].String()+" (one source)")
	}
	for _, name := range []string{"tls_ca", "tls_server_name"} {
		if p, ok := seen[name]; ok && !r.TLS {
			return newError(p, "storage", nil, name+": TLS is off (want tls on)")
		}
	}
	b.cfg.Redis = r
	return nil
}

// redisSubdirective reads one line of the storage redis block into r.
func redisSubdirective(c *Cursor, r *RedisStorage, seen map[string]Position) error {
	name := c.Val()
	if !slices.Contains(redisOptions, name) {
		return c.Errf("unknown subdirective %q%s", name, didYouMean(name, redisOptions))
	}
	if !setOnce(c, seen) {
		return c.Errf("%s: already set at %s", name, seen[name])
	}
	t, err := oneArg(c)
	if err != nil {
		return err
	}
	v := t.Text
	switch name {
	case "address":
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			return c.Wrapf(err, "address: invalid address %q (want host:port, as in 10.0.0.7:6379)", v)
		}
		if !validHost(host, false) {
			return c.Errf("address: invalid host %q", host)
		}
		if p, ok := parsePort(port); !ok || p == 0 {
			return c.Errf("address: invalid port %q (want 1-65535)", port)
		}
		r.Address = v
	case "db":
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return c.Errf("db: invalid database %q (want a number, 0 or more)", v)
		}
		r.DB = n
	case "username", "password", "key_prefix", "tls_server_name":
		if v == "" {
			return c.Errf("%s: empty value", name)
		}
		switch name {
		case "username":
			r.Username = v
		case "password":
			r.Password = v
		case "key_prefix":
			r.KeyPrefix = v
		default:
			if !validHost(v, false) {
				return c.Errf("tls_server_name: invalid name %q", v)
			}
			r.TLSServerName = v
		}
	case "password_file", "tls_ca":
		if v == "" {
			return c.Errf("%s: empty path", name)
		}
		f := File{Pos: t.Pos(), Path: v}
		if name == "tls_ca" {
			r.TLSCA = f
		} else {
			r.PasswordFile = f
		}
	case "tls":
		switch v {
		case "on":
			r.TLS = true
		case "off":
			r.TLS = false
		default:
			return c.Errf("tls: unknown value %q (want on, off)", v)
		}
	case "dial_timeout":
		return durationArg(c, t, &r.DialTimeout, true)
	case "lock_ttl":
		if err := durationArg(c, t, &r.LockTTL, true); err != nil {
			return err
		}
		if r.LockTTL < MinRedisLockTTL {
			return c.Errf("lock_ttl: %q is below %s (the holder extends its lock every third of it)", v, MinRedisLockTTL)
		}
	}
	return nil
}
