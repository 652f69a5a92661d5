// Package examples holds runnable Roamfiles and deployment files; its test
// keeps them loading.
package examples

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
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
			dec := yaml.NewDecoder(bytes.NewReader(data))
			for {
				var doc struct {
					Kind string
					Data map[string]string
					Spec struct {
						Containers []struct {
							Name         string
							VolumeMounts []struct{ MountPath string } `yaml:"volumeMounts"`
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
				for _, c := range doc.Spec.Containers {
					if c.Name == "roamgate" {
						for _, m := range c.VolumeMounts {
							mounts = append(mounts, m.MountPath)
						}
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
