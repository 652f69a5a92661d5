package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// buildVersion is set at link time: -ldflags "-X main.buildVersion=v1.2.3".
var buildVersion = ""

// version is the link-time version, else the module version go install
// recorded, else "devel".
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// versionText is what `roamgate version` prints: the version, then the
// VCS revision and time the binary was built from (with "modified" when
// the tree had changes), the Go version and platform.
func versionText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "roamgate %s\n", version())
	info := buildInfo()
	if rev := info["vcs.revision"]; rev != "" {
		fmt.Fprintf(&b, "revision %s", rev)
		if t := info["vcs.time"]; t != "" {
			fmt.Fprintf(&b, " (%s)", t)
		}
		if info["vcs.modified"] == "true" {
			b.WriteString(", modified")
		}
		b.WriteString("\n")
	} else {
		b.WriteString("revision unknown (built without VCS information: go build -buildvcs=true in a checkout records it)\n")
	}
	fmt.Fprintf(&b, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}

// buildInfo is the binary's build settings (vcs.revision, vcs.time,
// vcs.modified, ...), empty when it has none.
func buildInfo() map[string]string {
	m := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			m[s.Key] = s.Value
		}
	}
	return m
}
