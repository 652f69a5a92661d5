package examples

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readmeDirectives are the names the README documents: the first column of
// its Global options and site directive tables, and the subdirectives of
// its reverse_proxy block.
func readmeDirectives(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cell := regexp.MustCompile("`([a-z_]+)[ `]")
	var names []string
	section, inBlock := "", false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			section = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case (section == "Global options" || section == "Site addresses and routing") && strings.HasPrefix(line, "| `"):
			first := strings.SplitN(line, "|", 3)[1]
			for _, m := range cell.FindAllStringSubmatch(first+" ", -1) {
				names = append(names, m[1])
			}
		case section == "reverse_proxy" && strings.HasPrefix(line, "reverse_proxy "):
			inBlock = true
		case inBlock && line == "}":
			inBlock = false
		case inBlock:
			names = append(names, strings.Fields(line)[0])
		}
	}
	if len(names) < 30 {
		t.Fatalf("read only %d directives from the README: %v", len(names), names)
	}
	return names
}

// TestExamplesUseEveryDirective: between them, the example Roamfiles use
// every option and directive the README documents, as the README says.
func TestExamplesUseEveryDirective(t *testing.T) {
	used := map[string]bool{}
	files, _ := filepath.Glob("*/Roamfile")
	manifests, _ := filepath.Glob("kubernetes/*.yaml") // Roamfiles in ConfigMaps
	for _, f := range append(files, manifests...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if fs := strings.Fields(line); len(fs) > 0 && !strings.HasPrefix(fs[0], "#") {
				used[fs[0]] = true
			}
		}
	}
	for _, name := range readmeDirectives(t) {
		if !used[name] {
			t.Errorf("%s: documented in the README, used by no example Roamfile", name)
		}
	}
}
