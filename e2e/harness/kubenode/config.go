package kubenode

import (
	"fmt"
	"strings"
)

// containerdConfig is the node's /etc/containerd/config.toml: containerd's
// standard paths (inside the node's mount namespace), the CRI plugin with
// runc on cgroupfs, the box's sandbox image, CNI from Debian's plugins and
// hosts.toml under certs.d — what a kubeadm node on containerd 1.6 has, plus
// restrict_oom_score_adj (this machine lacks CAP_SYS_RESOURCE). A 2.x
// runtime gets the same in its own schema (containerdConfigV3).
func (n *Node) containerdConfig() string {
	if n.opts.Runtime.ConfigVersion >= 3 {
		return n.containerdConfigV3()
	}
	return fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
`, n.opts.SandboxImage, CNIBinDir)
}

// containerdConfigV3 is the same node configuration in containerd 2.x's
// version = 3 schema, as a kubeadm node on 2.x writes it: the CRI plugin is
// split into io.containerd.cri.v1.images (snapshotter, the sandbox image as
// pinned_images.sandbox, registry.config_path) and io.containerd.cri.v1.runtime
// (restrict_oom_score_adj, CNI, runc). Where 2.x moved a key: CNI's bin_dir
// became the list bin_dirs in 2.1; enable_cdi is gone in 2.1+ (CDI always
// on; 2.0 still reads it). NRI, on by default in 2.x, is turned off: its
// socket (/var/run/nri/nri.sock) is not one of the node's own paths, so two
// nodes would share it, and a kubeadm node on 1.6 has none.
func (n *Node) containerdConfigV3() string {
	rt := n.opts.Runtime
	cni := fmt.Sprintf("bin_dirs = [%q]", CNIBinDir)
	cdi := ""
	if rt.Major == 2 && rt.Minor == 0 {
		cni = fmt.Sprintf("bin_dir = %q", CNIBinDir)
		cdi = "\n    enable_cdi = false"
	}
	return fmt.Sprintf(`version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = %q
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "/etc/containerd/certs.d"

  [plugins."io.containerd.cri.v1.runtime"]
    restrict_oom_score_adj = true%s
    [plugins."io.containerd.cri.v1.runtime".cni]
      %s
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false

  [plugins."io.containerd.nri.v1.nri"]
    disable = true
`, n.opts.SandboxImage, cdi, cni)
}

// cniConfig is a bridge + host-local network over the node's pod range,
// with the node as the pods' gateway.
func (n *Node) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "box",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, n.opts.PodCIDR)
}

// kubeletConfig is the node's KubeletConfiguration: a normal node's, with
// the settings this machine kind needs (see the package doc).
func (n *Node) kubeletConfig() string {
	lines := []string{
		"apiVersion: kubelet.config.k8s.io/v1beta1",
		"kind: KubeletConfiguration",
		"address: " + n.IP().String(),
		"port: 10250",
		"readOnlyPort: 0",
		"healthzBindAddress: 127.0.0.1",
		"healthzPort: 10248",
		"containerRuntimeEndpoint: unix:///run/containerd/containerd.sock",
		"cgroupDriver: cgroupfs",
		"cgroupRoot: " + n.cgroup,
		"failSwapOn: false",
		"oomScoreAdj: 0",
		"protectKernelDefaults: false",
		"makeIPTablesUtilChains: false",
		"enforceNodeAllocatable: []",
		"localStorageCapacityIsolation: false",
		"evictionHard: {}",
		// The nodes share one disk: the kubelet must not collect images a
		// test relies on because the machine's disk is fuller than usual.
		"imageGCHighThresholdPercent: 100",
		"imageGCLowThresholdPercent: 99",
		"podLogsDir: /var/log/pods",
		"resolvConf: /etc/resolv.conf",
		"clusterDomain: cluster.local",
		"serializeImagePulls: false",
		"podCIDR: " + n.opts.PodCIDR,
		"authentication:",
		"  anonymous: {enabled: false}",
		"  webhook: {enabled: true}",
		"  x509: {clientCAFile: /etc/kubernetes/ca.crt}",
		"authorization:",
		"  mode: Webhook",
		"serverTLSBootstrap: false",
		"nodeStatusUpdateFrequency: 5s",
		"syncFrequency: 10s",
		"fileCheckFrequency: 10s",
	}
	return strings.Join(lines, "\n") + "\n"
}
