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
	"strings"
	"time"

	"github.com/roamgate/roamgate/configs"
)

// healthCmd asks a running roamgate whether it is alive (/healthz) or ready
// (/readyz, with --ready) on its admin endpoint, for a Docker HEALTHCHECK
// or a Kubernetes exec probe in an image without curl: it returns nil
// (exit 0) on 200, else an error with the failing checks (exit 1, the
// reason on stderr). The address is --admin, else the admin option of the
// Roamfile at --config.
func healthCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	admin := fs.String("admin", "", "the admin endpoint, HOST:PORT (default: the Roamfile's admin option)")
	config := fs.String("config", "Roamfile", "the Roamfile whose admin option names the endpoint, without --admin")
	ready := fs.Bool("ready", false, "check readiness (/readyz: listeners, certificates, backends) instead of liveness (/healthz)")
	timeout := durationFlag(fs, "timeout", 5*time.Second, "how long to wait for the answer (a `duration`)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	addr := *admin
	if addr == "" {
		cfg, err := configs.Load(*config)
		if err != nil {
			return err
		}
		if cfg.Admin == "" {
			return fmt.Errorf("%s has no admin option, so there is no health endpoint to ask (want admin HOST:PORT in its global options, or --admin)", *config)
		}
		addr = cfg.Admin
	}
	addr, err := dialableAdmin(addr)
	if err != nil {
		return err
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	status, body, err := askHealth(ctx, "http://"+addr+path, *timeout)
	if err != nil {
		return fmt.Errorf("health endpoint %s: %w", addr, err)
	}
	if status != http.StatusOK {
		what := "not healthy"
		if *ready {
			what = "not ready"
		}
		return fmt.Errorf("%s (%s%s: %d): %s", what, addr, path, status, failedChecks(body))
	}
	_, err = io.WriteString(stdout, body)
	return err
}

// dialableAdmin turns an admin listen address into one to dial: a wildcard
// host (":2019", "0.0.0.0:2019", "[::]:2019") is reached on loopback.
func dialableAdmin(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}

// healthBodyLimit bounds how much of an answer is read.
const healthBodyLimit = 64 << 10

// askHealth GETs rawURL within timeout, with no proxy from the environment,
// and returns the status and body.
func askHealth(ctx context.Context, rawURL string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, "", err
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err // without the URL, which the caller names
		}
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, healthBodyLimit))
	return resp.StatusCode, string(b), err
}

// failedChecks returns the "NAME failed: REASON" lines of a health answer,
// joined; the whole answer if it has none (another server answered).
func failedChecks(body string) string {
	var failed []string
	for line := range strings.Lines(body) {
		if line = strings.TrimSpace(line); strings.Contains(line, " failed: ") {
			failed = append(failed, line)
		}
	}
	if len(failed) == 0 {
		return strings.TrimSpace(body)
	}
	return strings.Join(failed, "; ")
}
