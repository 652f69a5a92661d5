package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/proxy"
	"github.com/roamgate/roamgate/proxy/handoff"
	"github.com/roamgate/roamgate/tlsmgr"
)

// executable is the path this process was started from, taken at start:
// an upgrade starts the binary that is at that path then.
var executable = func() string {
	p, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return p
}()

// upgrader starts the successor of this process (SIGUSR2, roamgate
// upgrade) and, once it serves, hands over: this process then drains.
type upgrader struct {
	sockets *handoff.Sockets
	logger  *zap.Logger
	args    []string // this process's, without the program name

	// beforeHandover, when set, runs once the successor serves, before
	// this process starts draining (the control socket stops accepting).
	beforeHandover func()

	// timeout bounds how long the successor may take to serve before the
	// upgrade is given up (it is stopped; this process serves on): the
	// Roamfile's upgrade_timeout.
	timeout func() time.Duration

	mu   sync.Mutex
	busy bool // an upgrade runs, or one succeeded
	// handedOver receives the successor once it serves.
	handedOver chan *handoff.Successor
}

func newUpgrader(sockets *handoff.Sockets, logger *zap.Logger) *upgrader {
	return &upgrader{sockets: sockets, logger: logger, args: os.Args[1:], handedOver: make(chan *handoff.Successor, 1),
		timeout: func() time.Duration { return configs.DefaultUpgradeTimeout }}
}

// upgrade starts the binary at this process's path as the successor and
// returns its process ID once it serves. On error this process serves on
// as before, and the reason is logged.
func (u *upgrader) upgrade(trigger string) (int, error) {
	if os.Getpid() == 1 {
		err := errors.New("upgrade: roamgate is PID 1 (a container's init): the container would end when this process exits after draining, and with it the new one; roll out a new image instead (reload changes the configuration in place)")
		u.logger.Error("upgrade refused: still serving", zap.String("trigger", trigger), zap.Error(err))
		return 0, err
	}
	u.mu.Lock()
	if u.busy {
		u.mu.Unlock()
		return 0, errors.New("upgrade: one is in progress, or this process has handed over already")
	}
	u.busy = true
	u.mu.Unlock()
	u.logger.Info("upgrade: starting the new binary", zap.String("trigger", trigger), zap.String("path", executable))
	timeout := u.timeout()
	if timeout <= 0 {
		timeout = configs.DefaultUpgradeTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	succ, err := u.sockets.Upgrade(ctx, handoff.Command{Path: executable, Args: u.args, Stdout: os.Stdout, Stderr: os.Stderr})
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w (upgrade_timeout %s)", err, timeout)
	}
	if err != nil {
		u.mu.Lock()
		u.busy = false
		u.mu.Unlock()
		u.logger.Error("upgrade failed: still serving", zap.String("trigger", trigger), zap.Error(err))
		return 0, err
	}
	if u.beforeHandover != nil {
		u.beforeHandover()
	}
	u.logger.Info("upgrade: the new process serves; this one drains", zap.Int("pid", succ.PID))
	u.handedOver <- succ
	return succ.PID, nil
}

// resumed allows upgrades again: the successor exited while this process
// drained, and it serves again.
func (u *upgrader) resumed() {
	u.mu.Lock()
	u.busy = false
	u.mu.Unlock()
}

// drain is the old process's end after an upgrade: it accepts nothing new,
// lets the successor read the UDP sockets, and serves the connections it
// has until the last one closes or upgradeGrace passes; then it shuts down
// with grace for the requests still in flight. If the successor exits
// first (it crashed, or was killed), this process accepts new connections
// again and drain reports resumed: the service is never left without an
// acceptor.
func drain(ctx context.Context, srv *proxy.Server, succ *handoff.Successor, upgradeGrace, grace time.Duration, logger *zap.Logger) (resumed bool, err error) {
	srv.StopAccepting()
	if err := succ.Release(); err != nil {
		logger.Warn("upgrade: telling the new process it has the sockets", zap.Error(err))
	}
	// The new process is the service's main process from now on.
	sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", succ.PID))
	start := time.Now()
	t := time.NewTimer(upgradeGrace)
	defer t.Stop()
	exited := succ.Exited()
	for {
		select {
		case <-srv.Idle():
			logger.Info("drained: the last connection has closed", zap.Duration("after", time.Since(start).Round(time.Millisecond)))
		case <-t.C:
			logger.Info("upgrade_grace over: the remaining connections are told to go away", zap.Duration("upgrade_grace", upgradeGrace),
				zap.Int64("sessions", srv.Sessions()))
		case <-ctx.Done():
			logger.Info("stopped while draining", zap.Int64("sessions", srv.Sessions()))
		case <-exited:
			succ.Reclaim() // the UDP sockets are read here again
			if err := srv.ResumeAccepting(); err != nil {
				logger.Error("upgrade: the new process exited; this one cannot accept again and drains on (restart roamgate)",
					zap.Int("pid", succ.PID), zap.NamedError("exit", succ.Err()), zap.Error(err))
				exited = nil
				continue
			}
			sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
			logger.Error("upgrade: the new process exited after it took over; this one accepts new connections again",
				zap.Int("pid", succ.PID), zap.NamedError("exit", succ.Err()))
			return true, nil
		}
		return false, shutdownQuiet(srv, grace, logger)
	}
}

// upgradeCmd asks the roamgate serving a Roamfile to upgrade its binary
// (as SIGUSR2 does) and waits for the answer: exit 0 once the new process
// serves, else the reason (the old process serves on).
func upgradeCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	config := fs.String("config", "Roamfile", "the Roamfile the running roamgate serves")
	dataDir := fs.String("data-dir", "", "the data directory the running roamgate was given (default: the Roamfile's, else "+tlsmgr.DefaultDataDir()+")")
	timeout := durationFlag(fs, "timeout", 0, "how long to wait for the answer (a `duration`; default the Roamfile's upgrade_timeout and 10s)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg, err := configs.Load(*config)
	if err != nil {
		return err
	}
	if *timeout == 0 {
		*timeout = cfg.UpgradeTimeout + 10*time.Second
	}
	body, err := control(tlsmgr.ConfigFor(cfg, *dataDir).DataDir, "upgrade", absPath(*config), *timeout)
	if err != nil {
		return err
	}
	_, err = stdout.Write(body)
	return err
}

// control sends a command to the control socket of the roamgate serving
// from dataDir and returns its answer.
func control(dataDir, command, config string, timeout time.Duration) ([]byte, error) {
	sock := filepath.Join(dataDir, controlSocket)
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true, // one command, one connection
	}}
	resp, err := client.Post("http://roamgate/"+command+"?config="+url.QueryEscape(config), "text/plain", nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "connect: ") {
			return nil, fmt.Errorf("no roamgate serves from %s: %w (start it with roamgate run, or give its --data-dir)", filepath.Dir(sock), err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(strings.TrimSpace(string(body)))
	}
	return body, nil
}
