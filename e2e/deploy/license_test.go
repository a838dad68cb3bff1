package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestLicense: the repository carries the Apache-2.0 text, and every place
// that writes the images' org.opencontainers.image.licenses label (the
// Makefile's IMAGE_LICENSES, scripts/build-images.sh, the Dockerfiles' ARG
// defaults) names it, so no image says NOASSERTION.
func TestLicense(t *testing.T) {
	r := root(t)
	text, err := os.ReadFile(filepath.Join(r, "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Apache License", "Version 2.0, January 2004", "END OF TERMS AND CONDITIONS"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("LICENSE does not contain %q: not the Apache-2.0 text", want)
		}
	}
	const spdx = "Apache-2.0"
	checks := []struct {
		file string
		re   *regexp.Regexp
	}{
		{"Makefile", regexp.MustCompile(`(?m)^IMAGE_LICENSES\s*\?=\s*(\S+)\s*$`)},
		{"scripts/build-images.sh", regexp.MustCompile(`(?m)^LICENSES=\$\{LICENSES:-([^}]+)\}`)},
		{"Dockerfile.agent", regexp.MustCompile(`(?m)^ARG LICENSES=(\S+)\s*$`)},
		{"Dockerfile.aggregator", regexp.MustCompile(`(?m)^ARG LICENSES=(\S+)\s*$`)},
	}
	for _, c := range checks {
		data, err := os.ReadFile(filepath.Join(r, c.file))
		if err != nil {
			t.Fatal(err)
		}
		m := c.re.FindSubmatch(data)
		switch {
		case m == nil:
			t.Errorf("%s: no default for the licenses label (%s)", c.file, c.re)
		case string(m[1]) != spdx:
			t.Errorf("%s: licenses label default %q, want %q (LICENSE)", c.file, m[1], spdx)
		}
	}
}
