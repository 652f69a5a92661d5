package tlsmgr

import (
	"os"
	"path/filepath"
)

// DefaultDataDir returns the directory roamgate keeps certificates and its
// local CA in when the Roamfile names none: $XDG_DATA_HOME/roamgate, else
// $HOME/.local/share/roamgate (as Caddy does), else ./roamgate-data.
//
// A relative XDG_DATA_HOME is ignored, as the XDG Base Directory
// Specification requires: it would make the data directory, and with it the
// local CA's trust, depend on the working directory.
func DefaultDataDir() string {
	if xdg := os.Getenv("XDG_DATA_HOME"); xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(xdg, "roamgate")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".local", "share", "roamgate")
	}
	return "./roamgate-data"
}

// RootCertPath is where the local CA's root certificate (PEM) lives under a
// data directory, for users who want to trust it.
func RootCertPath(dataDir string) string {
	return filepath.Join(dataDir, filepath.FromSlash(localCARootCertKey))
}
