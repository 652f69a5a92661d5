package examples

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The image's user (distroless "nonroot").
const nonroot = 65532

// headerCommands are the commands an example's header tells users to run:
// its comment lines "#   [VAR=value ...] ./roamgate validate|run ...".
var headerCommand = regexp.MustCompile(`^#\s+(\S.*\s)?\./roamgate (validate|run) `)

func headerCommands(t *testing.T, roamfile string) (lines []string) {
	t.Helper()
	data, err := os.ReadFile(roamfile)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if headerCommand.MatchString(sc.Text()) {
			lines = append(lines, strings.TrimSpace(strings.TrimPrefix(sc.Text(), "#")))
		}
	}
	return lines
}

// TestHeaderCommandsAsTheImageUser (issue 13): every example's header
// commands work as written, from the repository's root, as the container
// image's unprivileged user with the image's data directory: validate
// says valid, and run serves (it logs "serving") until SIGTERM and stops
// cleanly. run is started in a network namespace of its own (only its
// loopback), with CAP_NET_BIND_SERVICE as Docker gives ports below 1024.
func TestHeaderCommandsAsTheImageUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the commands as uid 65532 in a network namespace of their own")
	}
	if testing.Short() {
		t.Skip("builds roamgate")
	}
	bin := t.TempDir()
	os.Chmod(bin, 0o755)
	os.Chmod(filepath.Dir(bin), 0o755) // the test's temporary directory
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "roamgate"), "../cmd/roamgate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("*/Roamfile")
	if err != nil || len(files) < 4 {
		t.Fatalf("found %v (%v)", files, err)
	}
	for _, f := range files {
		cmds := headerCommands(t, f)
		if len(cmds) == 0 {
			t.Errorf("%s: no ./roamgate command in its header", f)
		}
		for _, line := range cmds {
			t.Run(f+": "+line, func(t *testing.T) {
				data := t.TempDir() // the image's /data volume, the user's
				if err := os.Chown(data, nonroot, nonroot); err != nil {
					t.Fatal(err)
				}
				os.Chmod(filepath.Dir(data), 0o755)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				// exec env: the signal reaches roamgate, not a shell.
				cmd := exec.CommandContext(ctx, "sh", "-c", "exec env "+strings.Replace(line, "./roamgate", filepath.Join(bin, "roamgate"), 1))
				cmd.Dir = root
				cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "XDG_DATA_HOME=" + data}
				cmd.SysProcAttr = &syscall.SysProcAttr{
					Credential: &syscall.Credential{Uid: nonroot, Gid: nonroot},
					Setpgid:    true,
				}
				var out syncBuffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if strings.Contains(line, "./roamgate validate") {
					if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "valid (") {
						t.Fatalf("%v\n%s", err, out.String())
					}
					return
				}
				cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
				cmd.SysProcAttr.AmbientCaps = []uintptr{10} // CAP_NET_BIND_SERVICE
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
			wait:
				for {
					select {
					case err := <-done:
						t.Fatalf("exited before serving: %v\n%s", err, out.String())
					case <-ctx.Done():
						t.Fatalf("not serving after 60 s:\n%s", out.String())
					case <-tick.C:
						if strings.Contains(out.String(), `"serving"`) || strings.Contains(out.String(), "\tserving\t") {
							break wait
						}
					}
				}
				syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				if err := <-done; err != nil {
					t.Fatalf("after SIGTERM: %v\n%s", err, out.String())
				}
				if !strings.Contains(out.String(), "stopped") {
					t.Fatalf("no clean stop:\n%s", out.String())
				}
			})
		}
	}
}

// syncBuffer is a bytes.Buffer for a process's output, read while written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
