package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// checkDataDir reports whether this process's user can keep roamgate's
// state in dir: dir is a writable directory, or the nearest directory
// above it that exists is one (run creates the rest). It creates nothing.
// The error names the directory, where it came from (from), and the user.
func checkDataDir(dir, from string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("data directory %s (%s): %w", dir, from, err)
	}
	p := abs
	for {
		fi, err := os.Stat(p)
		switch {
		case err == nil && !fi.IsDir():
			return fmt.Errorf("data directory %s (%s): %s is not a directory", dir, from, p)
		case err == nil:
			if err := syscall.Access(p, 0x2|0x1); err != nil { // W_OK|X_OK
				what := "is not writable"
				if p != abs {
					what = "does not exist, and " + p + " is not writable"
				}
				return fmt.Errorf("data directory %s (%s) %s by %s: %w; give that user a directory of its own with --data-dir or data_dir (in the container image, the /data volume)",
					dir, from, what, whoami(), err)
			}
			return nil
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			parent := filepath.Dir(p)
			if parent == p {
				return fmt.Errorf("data directory %s (%s): %w", dir, from, err)
			}
			p = parent
		default:
			return fmt.Errorf("data directory %s (%s) by %s: %w", dir, from, whoami(), err)
		}
	}
}

// whoami names this process's user: "uid 65532 (nonroot)".
func whoami() string {
	uid := os.Getuid()
	s := "uid " + strconv.Itoa(uid)
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		s += " (" + u.Username + ")"
	}
	return s
}
