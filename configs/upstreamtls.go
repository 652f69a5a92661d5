package configs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"

	"github.com/roamgate/roamgate/upstream"
)

// Load reads the files of t (tls_ca, tls_client_certificate) and returns
// the upstream package's TLS settings; nil for a nil t (plain upstreams).
// Each problem is an *Error at the file's place in the Roamfile, all of
// them joined. Parse does not read files, so that a Roamfile written for
// another machine parses anywhere; the proxy calls Load when it builds the
// pool, and `roamgate validate` calls it to check the files.
func (t *UpstreamTLS) Load() (*upstream.TLS, error) {
	if t == nil {
		return nil, nil
	}
	out := &upstream.TLS{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify}
	var errs []error
	fail := func(pos Position, cause error, msg string) {
		errs = append(errs, newError(pos, "reverse_proxy", cause, msg))
	}
	if len(t.CAFiles) > 0 {
		out.RootCAs = x509.NewCertPool()
	}
	for _, f := range t.CAFiles {
		if err := loadRoots(out.RootCAs, f.Path); err != nil {
			fail(f.Pos, err, "tls_ca: "+strconv.Quote(f.Path)+": "+err.Error())
		}
	}
	if t.ClientCert.Path != "" {
		certPEM, certErr := readPEM(t.ClientCert.Path)
		if certErr != nil {
			fail(t.ClientCert.Pos, certErr, "tls_client_certificate: certificate "+strconv.Quote(t.ClientCert.Path)+": "+certErr.Error())
		}
		keyPEM, keyErr := readPEM(t.ClientKey.Path)
		if keyErr != nil {
			fail(t.ClientKey.Pos, keyErr, "tls_client_certificate: key "+strconv.Quote(t.ClientKey.Path)+": "+keyErr.Error())
		}
		if certErr == nil && keyErr == nil {
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				fail(t.ClientCert.Pos, err, fmt.Sprintf("tls_client_certificate: certificate %q and key %q: %s",
					t.ClientCert.Path, t.ClientKey.Path, err))
			} else {
				out.Certificates = []tls.Certificate{cert}
			}
		}
	}
	if err := joinErrors(errs); err != nil {
		return nil, err
	}
	return out, nil
}

// loadRoots reads a PEM file of CA certificates into pool, checking that
// each CERTIFICATE block parses and that there is one at least.
func loadRoots(pool *x509.CertPool, file string) error {
	data, err := readPEM(file)
	if err != nil {
		return err
	}
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		n++
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("certificate %d: %w", n, err)
		}
		pool.AddCert(cert)
	}
	if n == 0 {
		return errors.New("no PEM certificate")
	}
	return nil
}

// maxPEMFile bounds a PEM file read for TLS to upstreams: a bundle of
// every public root is about 200 KiB.
const maxPEMFile = 4 << 20

// readPEM reads a file of at most maxPEMFile bytes. A path error is
// unwrapped to its cause, as the caller names the path; it still matches
// fs.ErrNotExist and fs.ErrPermission.
func readPEM(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	switch {
	case err != nil:
		return nil, unwrapPath(err)
	case len(data) > maxPEMFile:
		return nil, fmt.Errorf("larger than %d MiB", maxPEMFile>>20)
	}
	return data, nil
}

func unwrapPath(err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return pe.Err
	}
	return err
}
