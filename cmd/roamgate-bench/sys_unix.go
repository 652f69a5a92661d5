//go:build unix

package main

import (
	"fmt"
	"syscall"
)

// ensureFileLimit raises the soft open file limit to need when the hard
// limit allows it.
func ensureFileLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil // unknown: find out the hard way
	}
	if lim.Cur >= need {
		return nil
	}
	if lim.Max >= need {
		lim.Cur = need
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
			return nil
		}
	}
	return fmt.Errorf("open file limit %d is too low for these settings (each client connection is a UDP socket; about %d needed): raise it (ulimit -n) or lower --idle/--storm", lim.Cur, need)
}

// ownProcessGroup puts a child in a process group of its own: a Ctrl-C at
// the terminal reaches only the benchmark, which then stops its children in
// order.
func ownProcessGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
