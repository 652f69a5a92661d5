package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
)

// validateCmd checks a Roamfile, the certificate files it names (sites'
// and upstream TLS's) and the data directory (writable by the user running
// the check), and reports every problem with its file, line and column.
func validateCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	config := fs.String("config", "Roamfile", "the Roamfile to check")
	dataDir := fs.String("data-dir", "", "the data directory run would be given (overrides the Roamfile's data_dir)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg, err := configs.Load(*config)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range cfg.Sites {
		if s.TLS.Mode == configs.TLSFiles {
			err := tlsmgr.CheckCertFiles(s.TLS.CertFile, s.TLS.KeyFile)
			for _, e := range unjoin(err) {
				errs = append(errs, fmt.Errorf("%s: tls: %w", s.TLS.Pos, e))
			}
		}
	}
	// TLS to upstreams: the files of tls_ca and tls_client_certificate.
	for _, s := range cfg.Sites {
		for _, r := range s.Routes {
			if rp := r.ReverseProxy; rp != nil {
				_, err := rp.TLS.Load()
				errs = append(errs, unjoin(err)...)
			}
		}
	}
	// Certificate settings: site errors carry their Roamfile position.
	tcfg := tlsmgr.ConfigFor(cfg, *dataDir)
	errs = append(errs, unjoin(tlsmgr.Validate(tcfg))...)
	// The data directory, as the user that runs this check.
	from := "the default"
	switch {
	case *dataDir != "":
		from = "--data-dir"
	case cfg.DataDir != "":
		from = "data_dir in " + *config
	}
	if err := checkDataDir(tcfg.DataDir, from); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: valid (%d site%s; data directory %s writable by %s)\n", *config, len(cfg.Sites), plural(len(cfg.Sites)), tcfg.DataDir, whoami())
	return nil
}

// unjoin splits an errors.Join result into its errors.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
