package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// procSample is what /proc says about one process at one moment.
type procSample struct {
	CPU time.Duration // user + system time since the process started
	RSS int64         // resident set size, bytes (VmRSS)
	HWM int64         // peak resident set size, bytes (VmHWM), since start or the last resetPeak
}

// clockTicks returns the kernel's clock ticks per second (the unit of
// utime and stime in /proc/PID/stat), asking getconf CLK_TCK, or 100, the
// value on every common Linux architecture, when getconf is missing.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}

// readProc samples process pid from /proc/PID/stat and /proc/PID/status.
func readProc(pid int, ticks int64) (procSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read process %d stat: %w", pid, err)
	}
	cpu, err := parseStat(stat, ticks)
	if err != nil {
		return procSample{}, fmt.Errorf("process %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read process %d status: %w", pid, err)
	}
	rss, hwm, err := parseStatus(status)
	if err != nil {
		return procSample{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return procSample{CPU: cpu, RSS: rss, HWM: hwm}, nil
}

// parseStat returns the CPU time (utime + stime, fields 14 and 15) of a
// /proc/PID/stat line, whose ticks are 1/ticks seconds. The command name in
// field 2 is in parentheses and may itself hold spaces and parentheses, so
// the fields are counted from the last ')'.
func parseStat(stat []byte, ticks int64) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("parse stat: no command name")
	}
	// Fields after the name start with field 3 (state): utime is field 14,
	// so index 11 here, and stime index 12.
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse stat: %d fields after the command name, want at least 13", len(f))
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse stat utime: %w", err)
	}
	stime, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse stat stime: %w", err)
	}
	if ticks <= 0 {
		ticks = 100
	}
	return time.Duration((utime + stime) * int64(time.Second) / ticks), nil
}

// parseStatus returns VmRSS and VmHWM of a /proc/PID/status text, in bytes.
func parseStatus(status []byte) (rss, hwm int64, err error) {
	var haveRSS, haveHWM bool
	for line := range strings.Lines(string(status)) {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name != "VmRSS" && name != "VmHWM" {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("parse status %s: unexpected value %q", name, strings.TrimSpace(value))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse status %s: %w", name, err)
		}
		if name == "VmRSS" {
			rss, haveRSS = kb*1024, true
		} else {
			hwm, haveHWM = kb*1024, true
		}
	}
	if !haveRSS || !haveHWM {
		return 0, 0, errors.New("parse status: no VmRSS or VmHWM (a zombie, or not Linux)")
	}
	return rss, hwm, nil
}

// resetPeak resets the process's VmHWM to its current RSS (Linux ≥ 4.0,
// proc(5) clear_refs "5"), so a later VmHWM is the peak since now.
func resetPeak(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak rss of process %d: %w", pid, err)
	}
	return nil
}

// udpBufferMax returns net.core.rmem_max and wmem_max, or 0 when unknown.
func udpBufferMax() (rmem, wmem int64) {
	read := func(name string) int64 {
		b, err := os.ReadFile("/proc/sys/net/core/" + name)
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	return read("rmem_max"), read("wmem_max")
}
