// Package runtimes finds the container runtimes the tests run: Debian's
// containerd 1.6 (scripts/deps.txt) and the containerd 1.7 and 2.x that
// scripts/build-runtimes.sh builds from their Go modules, and crictl, the
// oracle of what a node's pull does.
package runtimes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
)

// DirEnv overrides where scripts/build-runtimes.sh put the runtimes (its
// PULLWATCH_RUNTIMES_DIR).
const DirEnv = "PULLWATCH_RUNTIMES_DIR"

// Containerd is one containerd release the tests can run.
type Containerd struct {
	// Name is "containerd-1.6", "containerd-2.4", ...: the release line.
	Name string
	// Binary is its containerd executable.
	Binary string
	// ShimDir holds its own containerd-shim-runc-v2 ("" for Debian's, on
	// PATH); put it first on containerd's PATH.
	ShimDir string
	// ConfigVersion is the config.toml schema it is written in by default:
	// 2 for 1.x, 3 for 2.x.
	ConfigVersion int
	// Major and Minor are the release line.
	Major, Minor int
}

// Env is what containerd's environment needs for its own shim.
func (c Containerd) Env() []string {
	if c.ShimDir == "" {
		return nil
	}
	return []string{"PATH=" + c.ShimDir + string(os.PathListSeparator) + os.Getenv("PATH")}
}

// TransferPull reports whether the CRI plugin pulls through the transfer
// service by default (containerd 2.1 and later).
func (c Containerd) TransferPull() bool { return c.Major > 2 || (c.Major == 2 && c.Minor >= 1) }

// built is what `build-runtimes.sh list` prints: name → directory.
func built() (map[string]string, error) {
	root, err := checkout.Root()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-runtimes.sh"), "list")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/build-runtimes.sh list: %w", err)
	}
	dirs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, dir, ok := strings.Cut(line, "=")
		if ok {
			dirs[name] = dir
		}
	}
	return dirs, nil
}

// Containerds returns every containerd this machine has, oldest first,
// and what is missing (the message names the script that installs it).
func Containerds() ([]Containerd, string) {
	var out []Containerd
	var missing []string
	if p, err := exec.LookPath("containerd"); err == nil {
		out = append(out, Containerd{Name: "containerd-1.6", Binary: p, ConfigVersion: 2, Major: 1, Minor: 6})
	} else {
		missing = append(missing, "containerd 1.6 (scripts/install-deps.sh)")
	}
	dirs, err := built()
	if err != nil {
		return out, err.Error()
	}
	names := make([]string, 0, len(dirs))
	for name := range dirs {
		if strings.HasPrefix(name, "containerd-") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		dir := dirs[name]
		var major, minor int
		if _, err := fmt.Sscanf(strings.TrimPrefix(name, "containerd-"), "%d.%d", &major, &minor); err != nil {
			continue
		}
		bin := filepath.Join(dir, "containerd")
		if !checkout.FileExists(bin) {
			missing = append(missing, name+" (scripts/build-runtimes.sh)")
			continue
		}
		version := 2
		if major >= 2 {
			version = 3
		}
		out = append(out, Containerd{Name: name, Binary: bin, ShimDir: dir, ConfigVersion: version, Major: major, Minor: minor})
	}
	return out, strings.Join(missing, ", ")
}

// Crictl is the crictl that scripts/build-runtimes.sh builds, else one on
// PATH.
func Crictl() (string, error) {
	if dirs, err := built(); err == nil {
		if p := filepath.Join(dirs["crictl"], "crictl"); checkout.FileExists(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("crictl"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no crictl: run scripts/build-runtimes.sh")
}
