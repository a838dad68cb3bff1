package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/netns"
)

// TempPattern names the directories TempDir makes (under os.TempDir()).
const TempPattern = "pwcluster-"

// TempDir makes a fresh directory for a cluster that lives as long as
// this process (tests); CleanupStale recognizes it by its name.
func TempDir() (string, error) { return os.MkdirTemp("", TempPattern) }

// CleanupStale removes what killed runs left: every TempDir cluster whose
// network's owner is gone (its daemons, containerd mounts, then the
// directory), then every stale network (netns.CleanupStale). A live run's
// cluster is never touched. It returns what it removed.
func CleanupStale(ctx context.Context) ([]string, error) {
	var removed []string
	var errs []error
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), TempPattern+"*"))
	for _, d := range dirs {
		stale, why := staleDir(d)
		if !stale {
			continue
		}
		if c, err := Attach(d, nil); err == nil || c != nil {
			if err := c.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", d, err))
			}
		} else {
			// No cluster.json: stop any containerd it has by its own state.
			nodes, _ := filepath.Glob(filepath.Join(d, "*", "containerd", "containerd.json"))
			for _, f := range nodes {
				if cd, err := containerd.Attach(filepath.Dir(f)); err == nil {
					if err := cd.Stop(); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, d+" ("+why+")")
	}
	gone, err := netns.CleanupStale(ctx, "")
	removed = append(removed, gone...)
	if err != nil {
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// staleDir decides whether a TempDir cluster is left over.
func staleDir(dir string) (bool, string) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		// Before its state is written (a second after it is made) or after
		// Stop: only old ones are left over.
		if st, err := os.Stat(dir); err == nil && time.Since(st.ModTime()) > 10*time.Minute {
			return true, "no cluster.json, older than 10m"
		}
		return false, ""
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return true, "unreadable cluster.json"
	}
	if st.Detach {
		return false, "" // pwlab's: pwlab cluster down removes it
	}
	n, err := netns.Attach(st.NetworkID)
	if err != nil {
		return true, "its network is gone"
	}
	if n.State().Stale() {
		return true, fmt.Sprintf("its owner pid %d is gone", n.State().OwnerPid)
	}
	return false, ""
}
