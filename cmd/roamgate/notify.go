package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sdNotify tells systemd (Type=notify) the service's state: "READY=1",
// "RELOADING=1", "STOPPING=1". Without $NOTIFY_SOCKET it does nothing;
// errors are ignored, as systemd's own sd_notify lets callers do.
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	if state == "RELOADING=1" {
		// Type=notify-reload wants the time the reload began.
		var ts unix.Timespec
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
			state += "\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/int64(time.Microsecond), 10)
		}
	}
	_, _ = c.Write([]byte(state))
}
