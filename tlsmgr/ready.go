package tlsmgr

import (
	"errors"
	"fmt"
	"strings"
)

// maxMissingNames bounds the names a readiness error lists.
const maxMissingNames = 10

// CertificatesReady reports whether the certificates the manager serves
// from the start are loaded: nil when they are, else an error that says
// what is missing. That means Start has loaded the certificate files
// (their names are the files' business: a file that does not cover one is
// only warned about) and issued or loaded the local CA's certificates, and
// the certificate cache holds one for every name of an ACME CA, obtained
// in the background. On-demand names are left out: they wait for their
// first handshake by design.
func (m *Manager) CertificatesReady() error {
	m.mu.Lock()
	loaded, stopped := m.loaded, m.stopped
	m.mu.Unlock()
	switch {
	case stopped:
		return errors.New("certificate manager stopped")
	case !loaded:
		return errors.New("certificates not loaded yet (starting)")
	}
	var missing []string
	n := 0
	for _, u := range m.plan().issuances {
		if u.key.onDemand {
			continue
		}
		for _, name := range u.names {
			if m.hasCertFor(name) || m.hasCertFor(asciiName(name)) {
				continue
			}
			n++
			if len(missing) < maxMissingNames {
				missing = append(missing, fmt.Sprintf("%s (%s)", name, issuerLabel(u)))
			}
		}
	}
	if n == 0 {
		return nil
	}
	more := ""
	if n > len(missing) {
		more = fmt.Sprintf(" and %d more", n-len(missing))
	}
	return fmt.Errorf("no certificate yet for %s%s", strings.Join(missing, ", "), more)
}

// issuerLabel says where an issuance's certificates come from, for
// readiness errors: "local ca", or "acme " and the CA's directory.
func issuerLabel(u *issuance) string {
	if !u.key.acme {
		return "local ca"
	}
	return "acme " + caOrDefault(u.key.settings.CA)
}
