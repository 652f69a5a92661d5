package tlsmgr

import (
	"slices"

	"github.com/roamgate/roamgate/configs"
)

// catchAllNames are the names a site without a host name (":443") gets
// certificates for at start: a catch-all answers anything, but only the
// local names can have a certificate without asking for one per name
// (on-demand TLS asks, per name).
var catchAllNames = []string{"localhost", "127.0.0.1", "::1"}

// ConfigFor derives a Manager's configuration from a Roamfile's:
//
//   - one Site per site block: its names and its tls directive ("tls
//     internal" → IssuerLocal, "issuer acme" → IssuerACME, "tls CERT KEY",
//     email/ca/ca_root → Site.ACME, on_demand → Site.OnDemand,
//     client_auth's files → Site.ClientCAFiles);
//   - a catch-all address (":443") adds the local names "localhost",
//     "127.0.0.1" and "::1" (in a local site of their own, unless the
//     block serves files), "localhost" as the default server name so that a
//     handshake with an unknown or missing SNI still gets a certificate,
//     and, with on_demand or client_auth, makes the block's site a
//     CatchAll. With client_auth that means every handshake the block
//     answers requires a client certificate: its local names, any server
//     name that no other block lists (on any port), and none at all. A
//     name that another block lists keeps that block's client_auth, as the
//     proxy routes its requests there (on the same port);
//   - a name in several blocks (on other ports) is managed once, with the
//     settings of the first: configs.Parse makes sure that they agree on
//     client_auth, as a handshake names the host but not the port;
//   - the global email, acme_ca and acme_ca_root as Config.ACME, on_demand_tls's
//     ask URL, http_port and https_port as the challenge ports (http_port 0,
//     an ephemeral port for tests, leaves certmagic assuming 80), and
//     default_bind's first host as ListenHost;
//   - the data directory: dataDir (the command line's --data-dir), else
//     the Roamfile's data_dir, else DefaultDataDir; with "storage redis",
//     Config.Redis too (the data directory then holds only what is the
//     instance's own: the control socket, the cookie key).
func ConfigFor(cfg *configs.Config, dataDir string) Config {
	out := Config{
		DataDir: dataDir,
		ACME: ACME{
			CA:         cfg.ACMECA,
			Email:      cfg.Email,
			CARootFile: cfg.ACMECARoot,
		},
		OnDemandAsk: cfg.OnDemandAsk,
		HTTPPort:    cfg.HTTPPort,
		TLSPort:     cfg.HTTPSPort,
	}
	if out.DataDir == "" {
		out.DataDir = cfg.DataDir
	}
	if out.DataDir == "" {
		out.DataDir = DefaultDataDir()
	}
	if len(cfg.DefaultBind) > 0 {
		out.ListenHost = cfg.DefaultBind[0]
	}
	if r := cfg.Redis; r != nil {
		out.Redis = &Redis{
			Address:       r.Address,
			DB:            r.DB,
			Username:      r.Username,
			Password:      r.Password,
			PasswordFile:  r.PasswordFile.Path,
			KeyPrefix:     r.KeyPrefix,
			TLS:           r.TLS,
			TLSCAFile:     r.TLSCA.Path,
			TLSServerName: r.TLSServerName,
			DialTimeout:   r.DialTimeout,
			LockTTL:       r.LockTTL,
		}
	}

	seen := map[string]bool{}   // a name in several blocks (other ports) is managed once
	clientAuthCatchAll := false // a second catch-all block (another port) adds nothing: Parse made it agree
	add := func(names []string, name string) []string {
		if seen[name] {
			return names
		}
		seen[name] = true
		return append(names, name)
	}
	for _, sc := range cfg.Sites {
		site := Site{
			Source:        source(sc.TLS.Pos),
			ACME:          ACME{CA: sc.TLS.CA, Email: sc.TLS.Email, CARootFile: sc.TLS.CARoot},
			OnDemand:      sc.TLS.OnDemand,
			ClientCAFiles: slices.Clone(sc.TLS.ClientCAFiles),
		}
		switch sc.TLS.Mode {
		case configs.TLSFiles:
			site.CertFile, site.KeyFile = sc.TLS.CertFile, sc.TLS.KeyFile
		case configs.TLSInternal:
			site.Issuer = IssuerLocal
		case configs.TLSACME:
			site.Issuer = IssuerACME
		}
		local := Site{Source: site.Source, Issuer: site.Issuer, ClientCAFiles: site.ClientCAFiles} // the catch-all's local names
		if site.Issuer == IssuerACME {
			local.Issuer = IssuerAuto // which keeps them local
		}
		for _, a := range sc.Addresses {
			if a.Host != "" {
				site.Names = add(site.Names, a.Host)
				continue
			}
			out.DefaultServerName = "localhost"
			site.CatchAll = site.OnDemand || len(site.ClientCAFiles) > 0 && !clientAuthCatchAll
			for _, n := range catchAllNames {
				if sc.TLS.Mode == configs.TLSFiles {
					site.Names = add(site.Names, n) // informative: the files serve them
				} else {
					local.Names = add(local.Names, n)
				}
			}
		}
		clientAuthCatchAll = clientAuthCatchAll || site.CatchAll && len(site.ClientCAFiles) > 0
		if len(site.Names) > 0 || site.CertFile != "" || site.CatchAll {
			out.Sites = append(out.Sites, site)
		}
		if len(local.Names) > 0 {
			out.Sites = append(out.Sites, local)
		}
	}
	return out
}

// source labels a site's errors with the Roamfile position of its tls
// directive (of the site, when it has none).
func source(pos configs.Position) string {
	if pos.Line == 0 {
		return ""
	}
	return pos.String() + ": tls"
}
