// Package runtimeprofile knows where each Kubernetes distribution keeps its
// container runtime on the node: the CRI socket, the runtime's registry
// configuration and the systemd units whose environment (the proxy) the
// runtime runs with. The agent picks the profile of the socket that
// answered (--runtime-profile=auto), so one DaemonSet serves a cluster
// whose nodes run different runtimes; flags set explicitly win over the
// profile's paths.
package runtimeprofile

import (
	"fmt"
	"os"
	"strings"

	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
)

// Profile names (--runtime-profile).
const (
	Auto       = "auto"
	Containerd = "containerd"
	K3s        = "k3s"
	RKE2       = "rke2"
	CRIO       = "crio"
	Talos      = "talos"
)

// Names are the profiles --runtime-profile accepts, auto first.
var Names = []string{Auto, Containerd, K3s, RKE2, CRIO, Talos}

// Sockets of the runtimes (unix endpoints). /var/run is /run on every
// distribution these run on.
const (
	ContainerdSocket = "unix:///run/containerd/containerd.sock"
	// K3sSocket is k3s's and RKE2's embedded containerd: RKE2 keeps k3s's
	// socket path (its agent config's ContainerRuntimeEndpoint).
	K3sSocket  = "unix:///run/k3s/containerd/containerd.sock"
	CRIOSocket = "unix:///var/run/crio/crio.sock"
)

// Profile is one runtime layout. Paths are node paths (read under
// --host-root).
type Profile struct {
	Name string
	// Endpoints are the CRI sockets to try, in order.
	Endpoints []string
	// ContainerdConfig is containerd's config.toml ("" for CRI-O).
	ContainerdConfig string
	// RegistryConfigPath overrides the config_path containerd's config
	// gives; "" reads it from ContainerdConfig.
	RegistryConfigPath string
	// Units are the systemd units that start the runtime, for
	// --proxy-from=systemd (only those present on the node are read).
	Units []string
	// ProxyPrefix is the variable prefix the runtime's supervisor strips
	// for the runtime alone (k3s, RKE2: CONTAINERD_HTTP_PROXY).
	ProxyPrefix string
	// Runtime is the CRI runtime name this profile expects.
	Runtime string
}

// k3sDir and rke2Dir are the agents' data directories (k3s --data-dir's
// and RKE2's defaults).
const (
	k3sDir  = "/var/lib/rancher/k3s"
	rke2Dir = "/var/lib/rancher/rke2"
)

var profiles = map[string]Profile{
	Containerd: {
		Name:             Containerd,
		Endpoints:        []string{ContainerdSocket},
		ContainerdConfig: "/etc/containerd/config.toml",
		Units:            []string{"containerd.service"},
		Runtime:          "containerd",
	},
	// k3s writes its containerd's config.toml (from config.toml.tmpl and
	// /etc/rancher/k3s/registries.yaml) under its agent directory, with
	// config_path pointing at the certs.d beside it. The install script's
	// unit is k3s.service (servers) or k3s-agent.service (agents), with
	// EnvironmentFile=-/etc/default/%N, -/etc/sysconfig/%N and
	// -/etc/systemd/system/%N.service.env, where it writes the proxy.
	K3s: {
		Name:             K3s,
		Endpoints:        []string{K3sSocket},
		ContainerdConfig: k3sDir + "/agent/etc/containerd/config.toml",
		Units:            []string{"k3s.service", "k3s-agent.service"},
		ProxyPrefix:      "CONTAINERD_",
		Runtime:          "containerd",
	},
	// RKE2: k3s's socket path, its own agent directory; units
	// rke2-server.service and rke2-agent.service (in /usr/local/lib or
	// /usr/lib/systemd/system) with EnvironmentFile=-/etc/default/%N,
	// -/etc/sysconfig/%N and -<unit dir>/%N.env.
	RKE2: {
		Name:             RKE2,
		Endpoints:        []string{K3sSocket},
		ContainerdConfig: rke2Dir + "/agent/etc/containerd/config.toml",
		Units:            []string{"rke2-server.service", "rke2-agent.service"},
		ProxyPrefix:      "CONTAINERD_",
		Runtime:          "containerd",
	},
	// CRI-O: /etc/containers/registries.conf(.d) and certs.d, the agent's
	// CRI-O defaults; unit crio.service.
	CRIO: {
		Name:      CRIO,
		Endpoints: []string{CRIOSocket},
		Units:     []string{"crio.service"},
		Runtime:   "cri-o",
	},
	// Talos runs the CRI's containerd with --config /etc/cri/containerd.toml
	// (which imports /etc/cri/conf.d/cri.toml, the merged .part files)
	// and writes the machine config's registries as hosts.toml files under
	// /etc/cri/conf.d/hosts, cri.toml's config_path. No systemd: the
	// proxy is the machine config's machine.env (--proxy-from=env with the
	// same variables on the agent, docs/install.md).
	Talos: {
		Name:               Talos,
		Endpoints:          []string{ContainerdSocket},
		ContainerdConfig:   "/etc/cri/containerd.toml",
		RegistryConfigPath: "/etc/cri/conf.d/hosts",
		Runtime:            "containerd",
	},
}

// Get returns the named profile (not Auto).
func Get(name string) (Profile, error) {
	p, ok := profiles[name]
	if !ok {
		return Profile{}, fmt.Errorf("runtime profile %q: want one of %s", name, strings.Join(Names, ", "))
	}
	return p, nil
}

// criDockerdSocket is cri-dockerd's (Docker Engine nodes), tried by auto.
const criDockerdSocket = "unix:///var/run/cri-dockerd.sock"

// Endpoints are the CRI sockets a profile tries: auto tries every
// runtime's in crictl's order (containerd, CRI-O, cri-dockerd), then k3s's
// and RKE2's.
func Endpoints(name string) []string {
	if name == Auto {
		return []string{ContainerdSocket, CRIOSocket, criDockerdSocket, K3sSocket}
	}
	p, err := Get(name)
	if err != nil {
		return nil
	}
	return p.Endpoints
}

// Detect returns the profile for name: itself unless auto, else the one
// whose socket answered (endpoint) and whose files the node has: on
// k3s's socket, RKE2 when only RKE2's config.toml exists; on containerd's,
// Talos when the node has /etc/cri/containerd.toml (mounted by the
// runtime-talos component). runtimeName is the name CRI reported.
func Detect(name string, root hostfs.Root, endpoint, runtimeName string) Profile {
	if name != Auto {
		p, _ := Get(name)
		return p
	}
	exists := func(p string) bool {
		_, err := os.Stat(root.Path(p))
		return err == nil
	}
	if runtimeName == "cri-o" {
		return profiles[CRIO]
	}
	switch strings.TrimPrefix(endpoint, "unix://") {
	case strings.TrimPrefix(K3sSocket, "unix://"):
		if !exists(profiles[K3s].ContainerdConfig) && exists(profiles[RKE2].ContainerdConfig) {
			return profiles[RKE2]
		}
		return profiles[K3s]
	case strings.TrimPrefix(CRIOSocket, "unix://"), "/run/crio/crio.sock":
		return profiles[CRIO]
	}
	if exists(profiles[Talos].ContainerdConfig) {
		// Talos also has /etc/containerd/config.toml: its system
		// containerd's, on another socket.
		return profiles[Talos]
	}
	return profiles[Containerd]
}
