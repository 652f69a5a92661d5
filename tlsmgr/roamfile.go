package tlsmgr

import "github.com/roamgate/roamgate/configs"

// catchAllNames are the names a site without a host name (":443") gets
// certificates for: a catch-all answers anything, but only the local names
// can have a certificate without asking for one per name.
var catchAllNames = []string{"localhost", "127.0.0.1", "::1"}

// ConfigFor derives a Manager's configuration from a Roamfile's: one Site
// per site block (its names and tls directive), the data directory (dataDir,
// the command line's --data-dir, else the Roamfile's data_dir, else
// DefaultDataDir), and "localhost"
// as the default server name when some site is a catch-all, so a handshake
// with an unknown or missing SNI still gets a certificate.
func ConfigFor(cfg *configs.Config, dataDir string) Config {
	out := Config{DataDir: dataDir}
	if out.DataDir == "" {
		out.DataDir = cfg.DataDir
	}
	if out.DataDir == "" {
		out.DataDir = DefaultDataDir()
	}
	seen := map[string]bool{} // a name in several blocks (other ports) is managed once
	for _, sc := range cfg.Sites {
		var names []string
		for _, a := range sc.Addresses {
			add := []string{a.Host}
			if a.Host == "" {
				add = catchAllNames
				out.DefaultServerName = "localhost"
			}
			for _, n := range add {
				if !seen[n] {
					seen[n] = true
					names = append(names, n)
				}
			}
		}
		site := Site{Names: names}
		switch sc.TLS.Mode {
		case configs.TLSFiles:
			site.CertFile, site.KeyFile = sc.TLS.CertFile, sc.TLS.KeyFile
		case configs.TLSInternal:
			site.Issuer = IssuerLocal
		}
		if len(site.Names) > 0 || site.CertFile != "" {
			out.Sites = append(out.Sites, site)
		}
	}
	return out
}
