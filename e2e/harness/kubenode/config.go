package kubenode

import (
	"fmt"
	"strings"
)

// containerdConfig is the node's /etc/containerd/config.toml: containerd's
// standard paths (inside the node's mount namespace), the CRI plugin with
// runc on cgroupfs, the box's sandbox image, CNI from Debian's plugins and
// hosts.toml under certs.d — what a kubeadm node on containerd 1.6 has, plus
// restrict_oom_score_adj (this machine lacks CAP_SYS_RESOURCE).
func (n *Node) containerdConfig() string {
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
