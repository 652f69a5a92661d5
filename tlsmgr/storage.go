package tlsmgr

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/tlsmgr/redisstore"
)

// Redis keeps a Manager's storage in a Redis server (see Config.Redis).
type Redis struct {
	// Address is the server's "host:port". Required.
	Address string
	// DB is the database number; 0 by default.
	DB int
	// Username and Password authenticate; PasswordFile names a file that
	// holds the password instead (a trailing newline is dropped), read by
	// NewStorage. At most one of Password and PasswordFile.
	Username, Password, PasswordFile string
	// KeyPrefix starts every key (redisstore.DefaultKeyPrefix when empty):
	// instances with the same server, DB and prefix share certificates.
	KeyPrefix string
	// TLS turns on TLS to the server, verified against the system roots
	// or, when set, the PEM file TLSCAFile, for the address's host or,
	// when set, TLSServerName. TLSCAFile and TLSServerName need TLS.
	TLS           bool
	TLSCAFile     string
	TLSServerName string
	// DialTimeout bounds connecting; redisstore.DefaultDialTimeout when 0.
	DialTimeout time.Duration
	// LockTTL is how long a lock outlives its holder's last extension;
	// redisstore.DefaultLockTTL (10 s) when 0. (Tests shorten it; the
	// Roamfile has no setting for it.)
	LockTTL time.Duration
}

// check returns the problems of r, reading its CA file.
func (r *Redis) check() []error {
	if r == nil {
		return nil
	}
	var errs []error
	if _, _, err := net.SplitHostPort(r.Address); err != nil {
		errs = append(errs, fmt.Errorf("tls redis storage address %q: want host:port", r.Address))
	}
	if r.Password != "" && r.PasswordFile != "" {
		errs = append(errs, errors.New("tls redis storage: a password and a password file (one source)"))
	}
	if !r.TLS && (r.TLSCAFile != "" || r.TLSServerName != "") {
		errs = append(errs, errors.New("tls redis storage: a TLS CA file or server name without TLS"))
	}
	if r.DB < 0 || r.DialTimeout < 0 || r.LockTTL < 0 {
		errs = append(errs, errors.New("tls redis storage: negative db, dial timeout or lock ttl"))
	}
	if r.TLSCAFile != "" {
		if _, err := r.roots(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// roots reads TLSCAFile.
func (r *Redis) roots() (*x509.CertPool, error) {
	certs, err := readCertificates(r.TLSCAFile)
	if err != nil {
		return nil, fmt.Errorf("tls redis storage ca %q: %w", r.TLSCAFile, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("tls redis storage ca %q: no PEM certificate", r.TLSCAFile)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// NewStorage returns the certificate storage cfg names: Redis (cfg.Redis)
// or the files of cfg.DataDir; every instance of a fleet that names the
// same shares it. A Redis storage counts its errors in cfg.Registerer's
// roamgate_storage_errors_total{op} (and returns them); the caller closes
// it (io.Closer) when done, as Manager.Stop does its own.
func NewStorage(cfg Config) (certmagic.Storage, error) { return newStorage(cfg, nil) }

// newStorage is NewStorage, logging a Redis storage's errors to logger (nil:
// not logged).
func newStorage(cfg Config, logger *zap.Logger) (certmagic.Storage, error) {
	r := cfg.Redis
	if r == nil {
		if cfg.DataDir == "" {
			return nil, errors.New("tls: no data directory")
		}
		return &certmagic.FileStorage{Path: cfg.DataDir}, nil
	}
	if errs := r.check(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	opts := redisstore.Options{
		Address:     r.Address,
		DB:          r.DB,
		Username:    r.Username,
		Password:    r.Password,
		KeyPrefix:   r.KeyPrefix,
		DialTimeout: r.DialTimeout,
		LockTTL:     r.LockTTL,
	}
	if r.PasswordFile != "" {
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("tls redis storage password file: %w", err)
		}
		opts.Password = string(bytes.TrimRight(b, "\r\n"))
		if opts.Password == "" {
			return nil, fmt.Errorf("tls redis storage password file %q is empty", r.PasswordFile)
		}
	}
	if r.TLS {
		opts.TLS = &tls.Config{ServerName: r.TLSServerName, MinVersion: tls.VersionTLS12}
		if opts.TLS.ServerName == "" {
			opts.TLS.ServerName, _, _ = net.SplitHostPort(r.Address)
		}
		if r.TLSCAFile != "" {
			pool, err := r.roots()
			if err != nil {
				return nil, err
			}
			opts.TLS.RootCAs = pool
		}
	}
	var err error
	if opts.Errors, err = storageErrors(cfg.Registerer); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return redisstore.New(opts, logger.Named("storage"))
}

// storageErrors returns roamgate_storage_errors_total, registered with reg
// (shared with whoever registered it first) unless reg is nil.
func storageErrors(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "roamgate", Name: "storage_errors_total",
		Help: "Failed commands of the shared certificate storage (storage redis), by operation: store, load, delete, exists, list, stat, lock, refresh, unlock.",
	}, []string{"op"})
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("register storage metrics: %w", err)
	}
	return c, nil
}
