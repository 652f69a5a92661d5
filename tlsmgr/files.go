package tlsmgr

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// CheckCertFiles reports whether certFile holds a PEM certificate chain and
// keyFile a PEM private key that matches the chain's first certificate, as
// `roamgate validate` checks before anything is served. Both files may be
// the same file. Errors name the offending path; problems with both files
// are reported together.
func CheckCertFiles(certFile, keyFile string) error {
	_, err := loadCertFiles(certFile, keyFile)
	return err
}

// certPair is a certificate/key file pair that has been read and checked.
type certPair struct {
	certPEM []byte            // the certificate file as read
	keyPEM  []byte            // the key file as read
	leaf    *x509.Certificate // first certificate of certPEM
}

// loadCertFiles reads and checks a certificate/key file pair once, so that
// what is checked is exactly what gets served.
func loadCertFiles(certFile, keyFile string) (certPair, error) {
	var p certPair
	var certErr, keyErr error
	var key crypto.Signer

	if p.certPEM, certErr = readPEMFile(certFile); certErr == nil {
		p.leaf, certErr = parseCertificatePEM(p.certPEM)
	}
	if certErr != nil {
		certErr = fmt.Errorf("tls certificate %q: %w", certFile, certErr)
	}
	if p.keyPEM, keyErr = readPEMFile(keyFile); keyErr == nil {
		key, keyErr = parsePrivateKeyPEM(p.keyPEM)
	}
	if keyErr != nil {
		keyErr = fmt.Errorf("tls key %q: %w", keyFile, keyErr)
	}
	if err := errors.Join(certErr, keyErr); err != nil {
		return certPair{}, err
	}
	if !publicKeysEqual(key.Public(), p.leaf.PublicKey) {
		return certPair{}, fmt.Errorf("tls key %q does not match certificate %q", keyFile, certFile)
	}
	return p, nil
}

// readPEMFile reads a file; the caller names the path in its error, so the
// *fs.PathError is unwrapped to avoid saying the path twice. The cause still
// matches fs.ErrNotExist and fs.ErrPermission.
func readPEMFile(name string) ([]byte, error) {
	data, err := os.ReadFile(name)
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return nil, pe.Err
	}
	return data, err
}

// parseCertificatePEM returns the first certificate of a PEM chain, after
// checking that every CERTIFICATE block parses. Other blocks are skipped, so
// a file holding both certificate and key works.
func parseCertificatePEM(data []byte) (*x509.Certificate, error) {
	var leaf *x509.Certificate
	var n int
	sawKey := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			n++
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate %d of the chain: %w", n, err)
			}
			if leaf == nil {
				leaf = cert
			}
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			sawKey = true
		}
	}
	if leaf == nil {
		if sawKey {
			return nil, errors.New("no PEM certificate, only a private key (certificate and key swapped?)")
		}
		return nil, errors.New("no PEM certificate")
	}
	return leaf, nil
}

// parsePrivateKeyPEM returns the first private key of a PEM file: PKCS#8,
// PKCS#1 (RSA) or SEC 1 (EC), like crypto/tls.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	sawCert := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			sawCert = true
		case block.Type == "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported")
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			return parsePrivateKeyDER(block.Bytes)
		}
	}
	if sawCert {
		return nil, errors.New("no PEM private key, only a certificate (certificate and key swapped?)")
	}
	return nil, errors.New("no PEM private key")
}

// parsePrivateKeyDER parses a DER private key in any of the encodings
// crypto/tls accepts.
func parsePrivateKeyDER(der []byte) (crypto.Signer, error) {
	if key, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		switch key := key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return key.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
	}
	if key, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return key, nil
	}
	if key, err := x509.ParseECPrivateKey(der); err == nil {
		return key, nil
	}
	return nil, errors.New("private key is not PKCS#8, PKCS#1 or SEC 1 DER")
}

// publicKeysEqual reports whether two public keys are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
