// Package examples holds runnable Roamfiles and deployment files; its test
// keeps them loading.
package examples

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/roamgate/roamgate/configs"
)

// TestRoamfilesLoad parses every Roamfile under examples/.
func TestRoamfilesLoad(t *testing.T) {
	// The variables the examples read, as their comments tell users to set.
	t.Setenv("SSH_TUNNEL_TOKEN", "example-token")
	files, err := filepath.Glob("*/Roamfile")
	if err != nil || len(files) < 2 {
		t.Fatalf("found %v (%v)", files, err)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			cfg, err := configs.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Sites) == 0 {
				t.Fatal("no sites")
			}
		})
	}
}

// TestKubernetesManifests parses every YAML document under
// examples/kubernetes, and the Roamfile each ConfigMap carries, and checks
// the files that Roamfile names are where the pod mounts them.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("found %v (%v)", files, err)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var roamfiles []string
			var mounts []string
			var probes [][]string // the roamgate container's exec probes
			dec := yaml.NewDecoder(bytes.NewReader(data))
			for {
				var doc struct {
					Kind string
					Data map[string]string
					Spec struct {
						podSpec  `yaml:",inline"` // a Pod's
						Template struct {
							Spec podSpec // a Deployment's
						}
					}
				}
				if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				if doc.Kind == "ConfigMap" && doc.Data["Roamfile"] != "" {
					roamfiles = append(roamfiles, doc.Data["Roamfile"])
				}
				for _, c := range append(doc.Spec.Containers, doc.Spec.Template.Spec.Containers...) {
					if c.Name == "roamgate" {
						for _, m := range c.VolumeMounts {
							mounts = append(mounts, m.MountPath)
						}
						probes = append(probes, c.LivenessProbe.Exec.Command, c.ReadinessProbe.Exec.Command)
					}
				}
			}
			if len(roamfiles) == 0 {
				t.Fatal("no ConfigMap with a Roamfile")
			}
			for _, rf := range roamfiles {
				cfg, err := configs.Parse(f+" (ConfigMap)", []byte(rf), nil)
				if err != nil {
					t.Fatal(err)
				}
				checkProbes(t, probes, cfg, mounts)
				if r := cfg.Redis; r != nil {
					for _, p := range []string{r.PasswordFile.Path, r.TLSCA.Path} {
						if p != "" && !mounted(p, mounts) {
							t.Errorf("storage redis: %s is not under any of the roamgate container's mounts %v", p, mounts)
						}
					}
				}
				for _, s := range cfg.Sites {
					for _, p := range []string{s.TLS.CertFile, s.TLS.KeyFile, cfg.DataDir} {
						if p != "" && !mounted(p, mounts) {
							t.Errorf("%s is not under any of the roamgate container's mounts %v", p, mounts)
						}
					}
				}
			}
		})
	}
}

func mounted(path string, mounts []string) bool {
	for _, m := range mounts {
		if path == m || strings.HasPrefix(path, strings.TrimSuffix(m, "/")+"/") {
			return true
		}
	}
	return false
}

// podSpec is the part of a pod's spec the test reads.
type podSpec struct {
	Containers []struct {
		Name           string
		VolumeMounts   []struct{ MountPath string } `yaml:"volumeMounts"`
		LivenessProbe  probe                        `yaml:"livenessProbe"`
		ReadinessProbe probe                        `yaml:"readinessProbe"`
	}
}

// probe is the part of a Kubernetes probe the examples use.
type probe struct {
	Exec struct{ Command []string }
}

// checkProbes checks that the roamgate container's probes run roamgate
// health (the image has no curl), liveness and readiness, against an admin
// endpoint the Roamfile has, read from a Roamfile that is mounted.
func checkProbes(t *testing.T, probes [][]string, cfg *configs.Config, mounts []string) {
	t.Helper()
	if len(probes) != 2 {
		t.Fatalf("probes %q, want a liveness and a readiness probe", probes)
	}
	for i, cmd := range probes {
		if len(cmd) < 2 || cmd[0] != "/usr/bin/roamgate" || cmd[1] != "health" {
			t.Errorf("probe %q does not run /usr/bin/roamgate health", cmd)
			continue
		}
		if ready := slices.Contains(cmd, "--ready"); ready != (i == 1) {
			t.Errorf("probe %q: --ready %v, want it on the readiness probe only", cmd, ready)
		}
		if j := slices.Index(cmd, "--config"); j < 0 || j+1 == len(cmd) || !mounted(cmd[j+1], mounts) {
			t.Errorf("probe %q does not read a mounted Roamfile", cmd)
		}
	}
	if cfg.Admin == "" {
		t.Error("the probes ask the admin endpoint, which the Roamfile does not set")
	}
}
