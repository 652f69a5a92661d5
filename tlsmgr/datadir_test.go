package tlsmgr

import (
	"path/filepath"
	"testing"
)

func TestDefaultDataDir(t *testing.T) {
	xdg := filepath.Join(t.TempDir(), "xdg")
	home := filepath.Join(t.TempDir(), "home")
	tests := []struct {
		name      string
		xdg, home string
		want      string
	}{
		{"XDG_DATA_HOME wins", xdg, home, filepath.Join(xdg, "roamgate")},
		{"HOME without XDG_DATA_HOME", "", home, filepath.Join(home, ".local", "share", "roamgate")},
		{"relative XDG_DATA_HOME is ignored", "relative/data", home, filepath.Join(home, ".local", "share", "roamgate")},
		{"neither", "", "", "./roamgate-data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("XDG_DATA_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			if got := DefaultDataDir(); got != tt.want {
				t.Errorf("DefaultDataDir() = %q, want %q", got, tt.want)
			}
		})
	}
}
