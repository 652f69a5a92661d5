package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/roamgate/roamgate/configs"
	"github.com/roamgate/roamgate/tlsmgr"
)

// trustCmd prints the local CA's root certificate, or installs it into the
// system trust store so browsers and tools trust roamgate's development
// certificates. With --config, the CA is the one of the Roamfile's
// storage: its data directory, or a fleet's Redis. A data directory without a CA is an error (a wrong
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
	var cfg *configs.Config
	if *config != "" {
		var err error
		if cfg, err = configs.Load(*config); err != nil {
			return err
		}
		if dir == "" {
			dir = cfg.DataDir
		}
	}
	if dir == "" {
		dir = tlsmgr.DefaultDataDir()
	}
	tcfg := tlsmgr.Config{DataDir: dir}
	if cfg != nil {
		tcfg.Redis = tlsmgr.ConfigFor(cfg, dir).Redis // a fleet's CA lives in its Redis
	}
	pem, err := storedRoot(tcfg, *create)
	if err != nil {
		return err
	}

	if !*install {
		from := "also at " + tlsmgr.RootCertPath(dir)
		if tcfg.Redis != nil {
			from = "from the Redis storage at " + tcfg.Redis.Address
		}
		fmt.Fprintf(stderr, "roamgate's local CA root (%s); install it with: roamgate trust --install\n", from)
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

// storedRoot returns the local CA's root from cfg's storage (Redis, or the
// data directory's files). A storage without one is an error unless
// create, which makes one there, as a server's first start would.
func storedRoot(cfg tlsmgr.Config, create bool) ([]byte, error) {
	where := cfg.DataDir + " (no " + tlsmgr.RootCertPath(cfg.DataDir) + ")"
	if cfg.Redis != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := tlsmgr.NewStorage(cfg)
		if err != nil {
			return nil, err
		}
		pem, err := tlsmgr.LocalCARoot(ctx, st)
		st.(io.Closer).Close()
		switch {
		case err == nil:
			return pem, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("local CA in the Redis storage at %s: %w", cfg.Redis.Address, err)
		}
		where = "the Redis storage at " + cfg.Redis.Address
	} else if _, err := os.Stat(tlsmgr.RootCertPath(cfg.DataDir)); err == nil {
		create = true // there: tlsmgr.New loads it
	}
	if !create {
		return nil, fmt.Errorf("no local CA in %s: roamgate run, reverse-proxy or demo creates it on its first start there; "+
			"give the --data-dir (or --config) of that server, or --create to create one now", where)
	}
	m, err := tlsmgr.New(cfg, nil)
	if err != nil {
		return nil, err
	}
	defer m.Stop()
	return m.LocalCA().RootPEM(), nil
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
