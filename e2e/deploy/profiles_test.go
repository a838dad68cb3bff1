package deploy_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullwatch/pullwatch/agent/pkg/runtimeprofile"
)

// runtimeProfiles are the runtime profiles besides plain containerd: each
// a kustomize component deploy/components/runtime-<name> and a chart value
// in runtime.profiles.
var runtimeProfiles = []string{"k3s", "rke2", "crio", "talos"}

// TestRuntimeProfilesHelmMatchesKustomize: for each runtime profile (and
// k3s with RKE2 together, a mixed cluster), `helm template --set
// runtime.profiles={...}` renders exactly the objects of deploy/ with the
// profile's components, and the DaemonSet mounts, read-only under /host,
// every node path the agent's profile reads (its containerd config's
// directory, its registry config_path, its units' directories and their
// EnvironmentFile=s).
func TestRuntimeProfilesHelmMatchesKustomize(t *testing.T) {
	sets := [][]string{{}}
	for _, p := range runtimeProfiles {
		sets = append(sets, []string{p})
	}
	sets = append(sets, []string{"k3s", "rke2"})
	for _, set := range sets {
		name := strings.Join(set, "+")
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			want, err := decodeMaps("kustomize "+name, kustomizeWith(t, runtimeComponents(set)...))
			if err != nil {
				t.Fatal(err)
			}
			var args []string
			if len(set) > 0 {
				args = []string{"--set", "runtime.profiles={" + strings.Join(set, ",") + "}"}
			}
			helmOut := helmTemplate(t, args...)
			if _, err := decodeAll("helm template "+name, helmOut); err != nil {
				t.Fatal(err)
			}
			got, err := decodeMaps("helm template "+name, helmOut)
			if err != nil {
				t.Fatal(err)
			}
			// A strategic merge patch moves the items it adds or changes
			// to the front of a list; the order of volumes, mounts and env
			// variables (each named) means nothing, so both sides are
			// compared sorted by name.
			for _, objs := range []map[string]map[string]any{want, got} {
				for _, m := range objs {
					sortNamedLists(m)
				}
			}
			compareObjects(t, want, got)

			objs, err := decodeAll("helm template "+name, helmOut)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				ds, ok := o.obj.(*appsv1.DaemonSet)
				if !ok {
					continue
				}
				spec := ds.Spec.Template.Spec
				c := containerNamed(t, &spec, "agent")
				mounted := map[string]bool{}
				for _, m := range c.VolumeMounts {
					if m.ReadOnly && strings.HasPrefix(m.MountPath, "/host/") {
						mounted[strings.TrimPrefix(m.MountPath, "/host")] = true
					}
				}
				covered := func(p string) bool {
					for dir := range mounted {
						if p == dir || strings.HasPrefix(p, dir+"/") {
							return true
						}
					}
					return false
				}
				for _, pn := range set {
					if pn == "crio" {
						pn = runtimeprofile.CRIO
					}
					prof, err := runtimeprofile.Get(pn)
					if err != nil {
						t.Fatal(err)
					}
					var need []string
					if prof.ContainerdConfig != "" {
						need = append(need, prof.ContainerdConfig)
					}
					if prof.RegistryConfigPath != "" {
						need = append(need, prof.RegistryConfigPath)
					}
					switch pn {
					case runtimeprofile.K3s:
						need = append(need, "/etc/systemd/system/k3s.service", "/etc/systemd/system/k3s-agent.service.env", "/etc/default/k3s", "/etc/sysconfig/k3s")
					case runtimeprofile.RKE2:
						need = append(need, "/usr/local/lib/systemd/system/rke2-server.service", "/usr/local/lib/systemd/system/rke2-server.env",
							"/usr/lib/systemd/system/rke2-agent.service", "/etc/default/rke2-agent", "/etc/sysconfig/rke2-server")
					case runtimeprofile.CRIO:
						need = append(need, "/etc/containers/registries.conf", "/etc/containers/registries.conf.d", "/usr/lib/systemd/system/crio.service")
					}
					for _, p := range need {
						if !covered(p) {
							t.Errorf("profile %s reads the node's %s, which no read-only /host mount covers (%v)", pn, p, slices.Sorted(mapKeys(mounted)))
						}
					}
					for _, ep := range prof.Endpoints {
						sock := strings.TrimPrefix(ep, "unix://")
						if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == filepath.Dir(sock) }) {
							t.Errorf("profile %s: socket %s's directory is not mounted", pn, sock)
						}
					}
				}
			}
		})
	}
}

// sortNamedLists sorts, in place, every list below v whose items are all
// maps with a string "name".
func sortNamedLists(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if l, ok := e.([]any); ok && named(l) {
				slices.SortStableFunc(l, func(a, b any) int {
					return strings.Compare(a.(map[string]any)["name"].(string), b.(map[string]any)["name"].(string))
				})
				x[k] = l
			}
			sortNamedLists(e)
		}
	case []any:
		for _, e := range x {
			sortNamedLists(e)
		}
	}
}

func named(l []any) bool {
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok {
			return false
		}
		if _, ok := m["name"].(string); !ok {
			return false
		}
	}
	return len(l) > 0
}

// runtimeComponents are the components of the runtime profiles named.
func runtimeComponents(profiles []string) []string {
	out := make([]string, len(profiles))
	for i, p := range profiles {
		out[i] = "runtime-" + p
	}
	return out
}
