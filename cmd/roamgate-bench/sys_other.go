//go:build !unix

package main

import "syscall"

// ensureFileLimit has nothing to check where there is no open file limit.
func ensureFileLimit(need uint64) error { return nil }

// ownProcessGroup leaves the child in the benchmark's process group.
func ownProcessGroup() *syscall.SysProcAttr { return nil }
