package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/handoff"
	"github.com/roamgate/roamgate/tlsmgr"
)

// controlSocket is the name of the running server's control socket in its
// data directory: a unix socket only its user can open (0600 in a 0700
// directory), so `roamgate reload` needs no setup and lets no one else in.
const controlSocket = "control.sock"

// reloader re-reads the Roamfile a server was started with and applies it
// (proxy.Server.Reload), for SIGHUP and `roamgate reload`; one at a time.
type reloader struct {
	srv     *proxy.Server
	certs   *tlsmgr.Manager
	logs    *logs  // nil: the log settings cannot change
	dataDir string // as given to run (--data-dir), "" for the Roamfile's
	logger  *zap.Logger

	mu      sync.Mutex
	cur     *configs.Config
	drained bool // an upgrade handed over to a successor
}

// reload loads the Roamfile again and applies it. An invalid file, or a
// change that cannot be applied in place, is an error (logged with its
// places) and the running configuration stays.
func (r *reloader) reload(trigger string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	sdNotify("RELOADING=1")
	defer sdNotify("READY=1")
	err := r.apply()
	if err != nil {
		r.logger.Error("reload refused: still serving the previous configuration", zap.String("trigger", trigger),
			zap.String("config", r.cur.File), zap.Error(err))
		return err
	}
	r.logger.Info("reloaded", zap.String("trigger", trigger), zap.String("config", r.cur.File))
	return nil
}

// handedOver makes reloads refuse: after an upgrade the successor serves
// the Roamfile, and this process only drains.
func (r *reloader) handedOver() {
	r.mu.Lock()
	r.drained = true
	r.mu.Unlock()
}

// resumed makes reloads work again: the successor exited while this
// process drained, and it serves the Roamfile again.
func (r *reloader) resumed() {
	r.mu.Lock()
	r.drained = false
	r.mu.Unlock()
}

func (r *reloader) apply() (err error) {
	if r.drained {
		return errors.New("this process has handed over to its successor (an upgrade) and only drains: reload the new process")
	}
	next, err := configs.Load(r.cur.File)
	if err != nil {
		return err
	}
	// New log settings: their files open first (a path that cannot be
	// written refuses the reload); they take effect with the rest.
	var logChange *logChange
	if configs.Fingerprint(r.cur.Log) != configs.Fingerprint(next.Log) {
		if r.logs == nil {
			return fmt.Errorf("%s: reload: the log settings changed: that needs a restart (the running configuration is unchanged)", next.File)
		}
		if logChange, err = r.logs.prepare(next.Log); err != nil {
			return err
		}
		committed := false
		defer func() {
			if !committed {
				logChange.abort()
			}
		}()
		defer func() { committed = err == nil }()
	}
	// Certificates first, so that by the time requests route to a new
	// site its name has one; if the rest fails, they go back.
	curTLS := r.tlsConfig(r.cur)
	// The first ACME site needs the plain-HTTP port (HTTP-01 challenges,
	// redirects): it opens before the certificate manager learns of it,
	// and closes again if the reload fails.
	if r.certs != nil && tlsmgr.ConfigFor(next, r.dataDir).UsesACME() {
		opened, oerr := r.srv.OpenHTTPPort()
		if oerr != nil {
			return fmt.Errorf("%s: reload: %w (the running configuration is unchanged)", next.File, oerr)
		}
		if opened {
			defer func() {
				if err != nil {
					r.srv.CloseHTTPPort()
				}
			}()
		}
	}
	nextTLS := r.tlsConfig(next)
	tlsChanged := r.certs != nil && configs.Fingerprint(curTLS) != configs.Fingerprint(nextTLS)
	if tlsChanged {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := r.certs.Update(ctx, nextTLS); err != nil {
			return err
		}
	}
	if err := r.srv.Reload(next); err != nil {
		if tlsChanged {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if rerr := r.certs.Update(ctx, curTLS); rerr != nil {
				r.logger.Error("reload: putting the previous certificates back", zap.Error(rerr))
			}
		}
		return err
	}
	if logChange != nil {
		logChange.commit()
		r.logger.Info("log settings changed", zap.String("level", next.Log.Level), zap.String("format", next.Log.Format))
	}
	r.cur = next
	return nil
}

// tlsConfig is the certificate manager's configuration for cfg, with the
// challenge ports the server listens on.
func (r *reloader) tlsConfig(cfg *configs.Config) tlsmgr.Config {
	tcfg := tlsmgr.ConfigFor(cfg, r.dataDir)
	tcfg.HTTPPort, tcfg.TLSPort = r.srv.ChallengePorts()
	return tcfg
}

// watch reloads whenever the Roamfile's content changes, looking every
// interval: the file read through any symlinks, so a Kubernetes
// ConfigMap's swap of its ..data link is a change like an edit in place. A
// file that cannot be read, or does not parse, is logged (reload refused)
// and looked at again.
func (r *reloader) watch(interval time.Duration) (stop func()) {
	name := r.config()
	last, _ := os.ReadFile(name)
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			now, err := os.ReadFile(name)
			if err != nil || bytes.Equal(now, last) {
				continue
			}
			last = now
			_ = r.reload("watch") // logged either way
		}
	}()
	return func() { close(done); <-exited }
}

// serveControl answers `roamgate reload` and `roamgate upgrade` on the
// data directory's control socket until stop. A successor in an upgrade
// takes the socket over (the same listening socket, so no command is
// lost); stop(false) leaves its file to it.
func (r *reloader) serveControl(dataDir string, sockets *handoff.Sockets, u *upgrader, takeOver bool) (stop func(remove bool), err error) {
	path := filepath.Join(dataDir, controlSocket)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	if !takeOver {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another roamgate serves from this data directory", path)
		}
		_ = os.Remove(path) // a stale socket of a process that is gone
	}
	ln, inherited, err := sockets.ListenUnix(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if !inherited {
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
	}
	mux := http.NewServeMux()
	ours := func(w http.ResponseWriter, req *http.Request) bool {
		if want := req.URL.Query().Get("config"); want != "" && want != absPath(r.config()) {
			http.Error(w, fmt.Sprintf("this roamgate serves %s, not %s", absPath(r.config()), want), http.StatusConflict)
			return false
		}
		return true
	}
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, req *http.Request) {
		if !ours(w, req) {
			return
		}
		if err := r.reload("roamgate reload"); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		fmt.Fprintf(w, "reloaded %s\n", r.config())
	})
	mux.HandleFunc("POST /upgrade", func(w http.ResponseWriter, req *http.Request) {
		if !ours(w, req) {
			return
		}
		pid, err := u.upgrade("roamgate upgrade")
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		fmt.Fprintf(w, "upgraded: process %d serves %s; process %d drains its connections\n", pid, r.config(), os.Getpid())
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	// Once the successor serves, it answers the control socket: this
	// process accepts no more (it answers what it accepted already).
	u.beforeHandover = func() { _ = ln.Close() }
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln)
	}()
	var once sync.Once
	return func(remove bool) {
		once.Do(func() {
			// Shutdown, not Close: the upgrade command that led here
			// gets its answer.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = hs.Shutdown(ctx)
			<-done
			if remove {
				_ = os.Remove(path)
			}
		})
	}, nil
}

// current is the configuration being served (the last one reloaded).
func (r *reloader) current() *configs.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *reloader) config() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur.File
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// reloadCmd asks the roamgate serving a Roamfile to load it again, over
// the control socket in its data directory, and says how it went: exit 0
// once the new configuration is live, else the errors (with their places)
// and the running configuration unchanged.
func reloadCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	config := fs.String("config", "Roamfile", "the Roamfile the running roamgate serves")
	dataDir := fs.String("data-dir", "", "the data directory the running roamgate was given (default: the Roamfile's, else "+tlsmgr.DefaultDataDir()+")")
	timeout := durationFlag(fs, "timeout", 30*time.Second, "how long to wait for the answer (a `duration`)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg, err := configs.Load(*config)
	if err != nil {
		return err // the running configuration stays: nothing was sent
	}
	body, err := control(tlsmgr.ConfigFor(cfg, *dataDir).DataDir, "reload", absPath(*config), *timeout)
	if err != nil {
		return err
	}
	_, err = stdout.Write(body)
	return err
}
