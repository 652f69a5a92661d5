package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/handoff"
	"github.com/roamgate/roamgate/tlsmgr"
)

const defaultGrace = 10 * time.Second

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	config := fs.String("config", "Roamfile", "the Roamfile to serve")
	dataDir := fs.String("data-dir", "", "where certificates and the local CA live (overrides the Roamfile's data_dir; default "+tlsmgr.DefaultDataDir()+")")
	grace := durationFlag(fs, "grace", defaultGrace, "how long in-flight requests may finish on shutdown (a `duration`)")
	watch := fs.Bool("watch", false, "reload when the Roamfile changes (checked every second; a Kubernetes ConfigMap's symlink swap counts)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg, err := configs.Load(*config)
	if err != nil {
		return err
	}
	o := serveOptions{dataDir: *dataDir, grace: *grace, reloadable: true}
	if *watch {
		o.watch = time.Second
	}
	return serveLogged(ctx, cfg, o, stdout, stderr)
}

// serveLogged serves cfg with the loggers its log options ask for (stderr
// by default), opening their files first.
func serveLogged(ctx context.Context, cfg *configs.Config, o serveOptions, stdout, stderr io.Writer) (err error) {
	l, err := openLogs(cfg.Log, stdout, stderr)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, l.close()) }()
	o.logger, o.accessLogger, o.logs = l.logger, l.access, l
	return serve(ctx, cfg, o)
}

// serveOptions are the parts of serving that do not come from the Roamfile.
type serveOptions struct {
	dataDir      string
	grace        time.Duration
	reloadable   bool          // cfg comes from a Roamfile: SIGHUP and roamgate reload re-read it
	watch        time.Duration // with reloadable, how often to look for a change of the file; 0: never
	logger       *zap.Logger
	logs         *logs       // the loggers' settings, for reloads; nil: fixed
	accessLogger *zap.Logger // nil: the logger's "access" child
	// started, when set, runs once the listeners are up; an error stops
	// serving.
	started func(ctx context.Context, srv *proxy.Server, certs *tlsmgr.Manager) error
}

// serve runs roamgate for cfg until ctx ends, then shuts down gracefully:
// GOAWAY to HTTP/3 clients, in-flight requests get o.grace to finish (a
// second signal cuts it short).
func serve(ctx context.Context, cfg *configs.Config, o serveOptions) (err error) {
	logger := o.logger
	restore := zap.RedirectStdLog(logger.Named("stdlog")) // quic-go's socket buffer warnings
	defer restore()

	// The listening sockets: this process's predecessor's when it was
	// started by an upgrade (SIGUSR2), which then waits to hear that it
	// serves, or why not.
	sockets, err := handoff.New(handoff.Mode(cfg.UpgradeSteering), logger)
	if err != nil {
		return err
	}
	serving := false
	defer func() {
		if !serving {
			sockets.Failed(err)
		}
		sockets.Close()
	}()
	tcfg := tlsmgr.ConfigFor(cfg, o.dataDir)
	if err := tlsmgr.Validate(tcfg); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	secret, err := cookieSecret(tcfg.DataDir)
	if err != nil {
		return err
	}
	shared, err := sharedSecret(ctx, cfg, tcfg)
	if err != nil {
		return err
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: logger, Registry: reg, AccessLogger: o.accessLogger, CookieSecret: secret,
		SharedSecret: shared, Sockets: sockets, Generation: sockets.Generation()})
	if err != nil {
		return err
	}
	// Listeners first, certificates second: the certificate manager needs
	// the bound challenge ports, certmagic takes a busy challenge port for
	// one whose owner answers its challenges, and ACME certificates are
	// obtained in the background while everything else serves.
	if err := srv.Listen(tcfg.UsesACME()); err != nil {
		return err
	}
	tcfg.HTTPPort, tcfg.TLSPort = srv.ChallengePorts()
	tcfg.Registerer = reg
	certs, err := tlsmgr.New(tcfg, logger)
	if err != nil {
		return errors.Join(err, srv.Close())
	}
	defer certs.Stop()
	if err := srv.Serve(certs); err != nil {
		return errors.Join(err, srv.Close())
	}
	if err := certs.Start(ctx); err != nil {
		return errors.Join(err, shutdown(srv, o.grace, logger))
	}
	logger.Info("serving", zap.Int("sites", len(cfg.Sites)), zap.String("data_dir", tcfg.DataDir))
	// SIGHUP reloads the Roamfile (its default would end the process and
	// every connection); so does `roamgate reload`, over the control
	// socket in the data directory. Without a Roamfile (reverse-proxy)
	// there is nothing to reload.
	r := &reloader{srv: srv, certs: certs, logs: o.logs, dataDir: o.dataDir, logger: logger, cur: cfg}
	u := newUpgrader(sockets, logger)
	u.timeout = func() time.Duration { return r.current().UpgradeTimeout }
	stopControl := func(bool) {}
	if o.reloadable {
		stop, err := r.serveControl(tcfg.DataDir, sockets, u, sockets.Inherited())
		if err != nil {
			return errors.Join(err, shutdown(srv, o.grace, logger))
		}
		stopControl = stop
	}
	removeControl := true
	defer func() { stopControl(removeControl) }()
	if o.reloadable && o.watch > 0 {
		stopWatch := r.watch(o.watch)
		defer stopWatch()
	}
	// SIGUSR2 upgrades the binary (so does `roamgate upgrade`, over the
	// control socket).
	sigs, sigsDone := make(chan os.Signal, 1), make(chan struct{})
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR2)
	defer func() { signal.Stop(sigs); close(sigsDone) }()
	go func() {
		for {
			select {
			case sig := <-sigs:
				switch {
				case sig == syscall.SIGUSR2:
					go func() { _, _ = u.upgrade("SIGUSR2") }() // logged either way
				case !o.reloadable:
					logger.Warn("SIGHUP: nothing to reload (no Roamfile); still serving", zap.String("config", cfg.File))
				default:
					_ = r.reload("SIGHUP") // logged either way
				}
			case <-sigsDone:
				return
			}
		}
	}()
	if sockets.Inherited() {
		// The predecessor stops accepting once it hears this, and tells
		// systemd this process is the main one.
		if err := sockets.Ready(); err != nil {
			logger.Warn("upgrade: telling the previous process", zap.Error(err))
		}
	} else {
		sdNotify("READY=1") // serving, and reloads can be asked for
	}
	serving = true
	var startErr error
	if o.started != nil {
		startErr = o.started(ctx, srv, certs)
	}
	if startErr != nil {
		return errors.Join(startErr, shutdown(srv, o.grace, logger))
	}
	for {
		select {
		case <-ctx.Done():
			return shutdown(srv, o.grace, logger)
		case succ := <-u.handedOver:
			// The control socket is the successor's now; so is the rest.
			removeControl = false
			stopControl(false)
			r.handedOver()
			resumed, err := drain(ctx, srv, succ, r.current().UpgradeGrace, o.grace, logger)
			if !resumed {
				return err
			}
			// The successor died: this process serves the Roamfile again,
			// and may be upgraded again.
			r.resumed()
			u.resumed()
			if o.reloadable {
				stop, err := r.serveControl(tcfg.DataDir, sockets, u, false)
				if err != nil {
					logger.Error("control socket: roamgate reload and upgrade do not reach this process (SIGHUP and SIGUSR2 do)", zap.Error(err))
					stop = func(bool) {}
				}
				stopControl, removeControl = stop, true
			}
		}
	}
}

// shutdown stops srv within grace; a second SIGINT/SIGTERM stops it at once.
func shutdown(srv *proxy.Server, grace time.Duration, logger *zap.Logger) error {
	sdNotify("STOPPING=1")
	return shutdownQuiet(srv, grace, logger)
}

// shutdownQuiet is shutdown without telling systemd the service stops: for
// a process that has handed the service to its successor.
func shutdownQuiet(srv *proxy.Server, grace time.Duration, logger *zap.Logger) error {
	if grace <= 0 {
		grace = defaultGrace
	}
	logger.Info("shutting down", zap.Duration("grace", grace))
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	go func() {
		select {
		case <-sig:
			logger.Warn("second signal: closing now")
			cancel()
		case <-ctx.Done():
		}
	}()
	err := srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		logger.Warn("grace period over: remaining connections were closed")
		return nil
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// cookieSecret returns the key that signs lb_policy cookie values, kept in
// the data directory so a client's cookie still names its backend after a
// restart (and on every instance sharing the directory). It is created on
// first use.
func cookieSecret(dataDir string) ([]byte, error) {
	name := filepath.Join(dataDir, "lb_cookie_secret")
	if b, err := os.ReadFile(name); err == nil && len(b) == 32 {
		return b, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	// Write-then-rename, so a concurrent reader never sees half a key.
	tmp, err := os.CreateTemp(dataDir, ".lb_cookie_secret-*")
	if err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	if err := os.Link(tmp.Name(), name); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process won the race: use its key
			return cookieSecret(dataDir)
		}
		return nil, fmt.Errorf("cookie secret: %w", err)
	}
	return b, nil
}
