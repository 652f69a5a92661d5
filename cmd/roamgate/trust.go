package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
)

// trustCmd prints the local CA's root certificate, or installs it into the
// system trust store so browsers and tools trust roamgate's development
// certificates. A data directory without a CA is an error (a wrong
// --data-dir would otherwise get a new CA that no server uses), unless
// --create asks for one.
func trustCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trust", flag.ContinueOnError)
	config := fs.String("config", "", "a Roamfile whose data_dir holds the CA (optional)")
	dataDir := fs.String("data-dir", "", "where the local CA lives (overrides the Roamfile's data_dir; default "+tlsmgr.DefaultDataDir()+")")
	install := fs.Bool("install", false, "install the root into the system trust store (needs root/administrator)")
	create := fs.Bool("create", false, "create the local CA when the data directory has none yet (before the first run)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	dir := *dataDir
	if dir == "" && *config != "" {
		cfg, err := configs.Load(*config)
		if err != nil {
			return err
		}
		dir = cfg.DataDir
	}
	if dir == "" {
		dir = tlsmgr.DefaultDataDir()
	}
	if _, err := os.Stat(tlsmgr.RootCertPath(dir)); errors.Is(err, os.ErrNotExist) && !*create {
		return fmt.Errorf("no local CA in %s (no %s): roamgate run, reverse-proxy or demo creates it on its first start there; "+
			"give the --data-dir (or --config) of that server, or --create to create one now", dir, tlsmgr.RootCertPath(dir))
	}
	m, err := tlsmgr.New(tlsmgr.Config{DataDir: dir}, nil)
	if err != nil {
		return err
	}
	pem := m.LocalCA().RootPEM()
	m.Stop()

	if !*install {
		fmt.Fprintf(stderr, "roamgate's local CA root (also at %s); install it with: roamgate trust --install\n", tlsmgr.RootCertPath(dir))
		_, err := stdout.Write(pem)
		return err
	}
	where, err := installRoot(pem, systemStores(), stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed roamgate's local CA root into %s\n", where)
	fmt.Fprintln(stdout, "Firefox and Java keep trust stores of their own: import the root there too if you use them.")
	return nil
}

// trustStore is one system trust store: a directory of anchors and the
// command that rebuilds the store from it (or, with no directory, a command
// that takes the certificate file as its last argument).
type trustStore struct {
	name string
	dir  string   // anchors directory; empty: cmd takes the file
	file string   // file name in dir
	cmd  []string // run after writing
}

// systemStores lists the trust stores of this operating system, most
// common first.
func systemStores() []trustStore {
	switch runtime.GOOS {
	case "linux":
		return []trustStore{
			{name: "Debian/Ubuntu/Alpine", dir: "/usr/local/share/ca-certificates", file: "roamgate-local-ca.crt", cmd: []string{"update-ca-certificates"}},
			{name: "Fedora/RHEL", dir: "/etc/pki/ca-trust/source/anchors", file: "roamgate-local-ca.pem", cmd: []string{"update-ca-trust", "extract"}},
			{name: "Arch", dir: "/etc/ca-certificates/trust-source/anchors", file: "roamgate-local-ca.crt", cmd: []string{"trust", "extract-compat"}},
			{name: "openSUSE", dir: "/etc/pki/trust/anchors", file: "roamgate-local-ca.pem", cmd: []string{"update-ca-certificates"}},
		}
	case "darwin":
		return []trustStore{{name: "the macOS System keychain", cmd: []string{"security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", "/Library/Keychains/System.keychain"}}}
	case "windows":
		return []trustStore{{name: "the Windows ROOT store", cmd: []string{"certutil", "-addstore", "-f", "ROOT"}}}
	}
	return nil
}

// installRoot writes pem into the first store whose directory and command
// exist here and runs its command. It returns where the root went.
func installRoot(pem []byte, stores []trustStore, stderr io.Writer) (string, error) {
	for _, st := range stores {
		if _, err := exec.LookPath(st.cmd[0]); err != nil {
			continue
		}
		args := st.cmd[1:]
		if st.dir == "" {
			f, err := os.CreateTemp("", "roamgate-local-ca-*.crt")
			if err != nil {
				return "", err
			}
			defer os.Remove(f.Name())
			if _, err := f.Write(pem); err != nil {
				f.Close()
				return "", err
			}
			f.Close()
			args = append(args[:len(args):len(args)], f.Name())
		} else {
			if fi, err := os.Stat(st.dir); err != nil || !fi.IsDir() {
				continue
			}
			path := filepath.Join(st.dir, st.file)
			if err := os.WriteFile(path, pem, 0o644); err != nil {
				if errors.Is(err, fs.ErrPermission) {
					return "", fmt.Errorf("write %s: %w (run as root: sudo roamgate trust --install)", path, err)
				}
				return "", err
			}
		}
		cmd := exec.Command(st.cmd[0], args...)
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%s: %w", st.cmd[0], err)
		}
		return st.name, nil
	}
	return "", fmt.Errorf("no supported system trust store found on %s; trust the root by hand: roamgate trust > roamgate-root.crt", runtime.GOOS)
}
