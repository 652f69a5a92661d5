package main

import (
	"os"
	"testing"
	"time"
)

// statFixture is a real /proc/PID/stat line whose command name holds a
// space and parentheses, as a process may name itself anything.
const statFixture = "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 2961 0 0 0 1234 567 0 0 20 0 9 0 12345 1296969728 5636 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"

const statusFixture = `Name:	roamgate-bench
Umask:	0022
State:	S (sleeping)
Tgid:	4242
Pid:	4242
VmPeak:	 1266572 kB
VmSize:	 1266572 kB
VmLck:	       0 kB
VmHWM:	   31744 kB
VmRSS:	   22544 kB
RssAnon:	   12288 kB
Threads:	9
`

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stat  string
		ticks int64
		want  time.Duration
		bad   bool
	}{
		{name: "100 Hz", stat: statFixture, ticks: 100, want: 18010 * time.Millisecond}, // (1234+567) ticks
		{name: "250 Hz", stat: statFixture, ticks: 250, want: 7204 * time.Millisecond},
		{name: "unknown ticks", stat: statFixture, ticks: 0, want: 18010 * time.Millisecond},
		{name: "plain name", stat: "1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 5 7 0 0 20 0 1 0 1 0 0", ticks: 100, want: 120 * time.Millisecond},
		{name: "no name", stat: "1 init S 0", ticks: 100, bad: true},
		{name: "short", stat: "1 (init) S 0 1 1", ticks: 100, bad: true},
		{name: "garbage utime", stat: "1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 x 7 0", ticks: 100, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.stat), tc.ticks)
			if tc.bad {
				if err == nil {
					t.Fatalf("parseStat = %v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseStat = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	rss, hwm, err := parseStatus([]byte(statusFixture))
	if err != nil || rss != 22544*1024 || hwm != 31744*1024 {
		t.Fatalf("parseStatus = %d, %d, %v; want %d, %d", rss, hwm, err, 22544*1024, 31744*1024)
	}
	for name, bad := range map[string]string{
		"zombie (no Vm lines)": "Name:\tx\nState:\tZ (zombie)\n",
		"no unit":              "VmHWM:\t1\nVmRSS:\t2\n",
		"not a number":         "VmHWM:\tlots kB\nVmRSS:\t2 kB\n",
	} {
		if _, _, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestReadProc reads this process, which must have used some memory.
func TestReadProc(t *testing.T) {
	s, err := readProc(os.Getpid(), clockTicks())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.HWM < s.RSS {
		t.Errorf("rss %d, peak %d", s.RSS, s.HWM)
	}
	if _, err := readProc(1<<30, 100); err == nil {
		t.Error("no error for a process that cannot exist")
	}
}
