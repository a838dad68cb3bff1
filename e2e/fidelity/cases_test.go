package fidelity_test

import (
	"fmt"
	"strings"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/registryfront"
	"github.com/pullwatch/pullwatch/e2e/harness/runtimes"
)

const (
	certsD       = "/etc/containerd/certs.d"
	dockerCertsD = "/etc/docker/certs.d"
	k3sDir       = "/var/lib/rancher/k3s/agent/etc/containerd"
)

// reg is the registry table for a config version.
func reg(version int) string { return containerd.ImagesTable(version) + ".registry" }

// configPath is a registry section with config_path, and more lines.
func configPath(version int, path string, more ...string) string {
	s := fmt.Sprintf("[%s]\n  config_path = %q\n", reg(version), path)
	return s + strings.Join(more, "")
}

// authTOML is the registry.configs auth of host (as k3s writes
// registries.yaml credentials).
func authTOML(version int, host string) string {
	return fmt.Sprintf("[%s.configs.%q.auth]\n  username = %q\n  password = %q\n", reg(version), host, regUser, regPass)
}

// tlsTOML is the legacy registry.configs tls ca_file of host.
func tlsTOML(version int, host, ca string) string {
	return fmt.Sprintf("[%s.configs.%q.tls]\n  ca_file = %q\n", reg(version), host, ca)
}

// mirrorsTOML is the legacy registry.mirrors entry of host.
func mirrorsTOML(version int, host string, endpoints ...string) string {
	q := make([]string, len(endpoints))
	for i, ep := range endpoints {
		q[i] = fmt.Sprintf("%q", ep)
	}
	return fmt.Sprintf("[%s.mirrors.%q]\n  endpoint = [%s]\n", reg(version), host, strings.Join(q, ", "))
}

// mirrorHosts is a hosts.toml putting mirror (with capabilities) before
// the upstream server, both with the CA.
func (e *env) mirrorHosts(capabilities string, extra string) string {
	return fmt.Sprintf("server = %q\nca = %q\n\n[host.%q]\n  capabilities = %s\n  ca = %q\n%s", e.url(fUp), nodeCA, e.url(fMirror), capabilities, nodeCA, extra)
}

func v2x(rt runtimes.Containerd) bool      { return rt.Major >= 2 }
func transfer(rt runtimes.Containerd) bool { return rt.TransferPull() }
func withHosts(files ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(files); i += 2 {
		m[files[i]] = files[i+1]
	}
	return m
}

// matrix is every case. Each runs on every runtime unless only says.
func matrix() []fcase {
	up := func(image string) pull { return pull{front: fUp, image: image} }
	hostsWithCA := func(e *env, rt runtimes.Containerd) nodeConfig {
		return nodeConfig{
			registry: configPath(rt.ConfigVersion, certsD),
			files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA), certsD+"/"+e.host(fLo)+"/hosts.toml", e.hostsTOML(fLo, nodeCA),
				certsD+"/"+e.host(fToken)+"/hosts.toml", e.hostsTOML(fToken, nodeCA)),
		}
	}
	mirrored := func(capabilities, extra string) func(e *env, rt runtimes.Containerd) nodeConfig {
		return func(e *env, rt runtimes.Containerd) nodeConfig {
			return nodeConfig{
				registry: configPath(rt.ConfigVersion, certsD),
				files:    withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.mirrorHosts(capabilities, extra)),
			}
		}
	}
	pullResolve := `["pull", "resolve"]`
	// The private registry with its CA and no credentials in the
	// runtime's config: only the kubelet's count.
	authWithCA := func(e *env, rt runtimes.Containerd) nodeConfig {
		return nodeConfig{
			registry: configPath(rt.ConfigVersion, certsD),
			files:    withHosts(certsD+"/"+e.host(fAuth)+"/hosts.toml", e.hostsTOML(fAuth, nodeCA)),
		}
	}
	return []fcase{
		{
			name:   "hosts.toml [host] with ca: up, tag deleted",
			config: hostsWithCA,
			pulls:  []pull{up(imApp), up(imGone), {front: fLo, image: imApp}},
		},
		{
			name: "hosts.toml with a top-level ca and no [host] table",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", fmt.Sprintf("server = %q\nca = %q\n", e.url(fUp), nodeCA)),
				}
			},
			pulls: []pull{up(imApp), up(imGone)},
		},
		{
			name: "hosts.toml skip_verify",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n", e.url(fUp), e.url(fUp))),
				}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "hosts.toml with the wrong CA",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeOtherCA)),
				}
			},
			pulls: []pull{up(imApp), up(imGone)},
		},
		{
			name:   "mirror then server: both up; mirror's 404 falls through",
			config: mirrored(pullResolve, ""),
			pulls:  []pull{up(imApp), up(imUpOnly), up(imGone)},
		},
		{
			name:   "mirror then server: mirror down (fallback)",
			config: mirrored(pullResolve, ""),
			modes:  map[string]registryfront.Mode{fMirror: registryfront.Down},
			pulls:  []pull{up(imApp), up(imGone)},
		},
		{
			name:   "mirror then server: upstream down, mirror up",
			config: mirrored(pullResolve, ""),
			modes:  map[string]registryfront.Mode{fUp: registryfront.Down},
			pulls:  []pull{up(imApp), up(imUpOnly)},
		},
		{
			name:   "mirror then server: mirror hangs",
			config: mirrored(pullResolve, ""),
			modes:  map[string]registryfront.Mode{fMirror: registryfront.Hang},
			pulls:  []pull{up(imApp)},
		},
		{
			name:   "mirror then server: mirror answers 503",
			config: mirrored(pullResolve, ""),
			modes:  map[string]registryfront.Mode{fMirror: registryfront.ServerError},
			pulls:  []pull{up(imApp)},
		},
		{
			name:   "pull-only mirror (a tag needs resolve): upstream down",
			config: mirrored(`["pull"]`, ""),
			modes:  map[string]registryfront.Mode{fUp: registryfront.Down},
			pulls:  []pull{up(imApp)},
		},
		{
			name: "mirror with override_path: upstream down",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				h := fmt.Sprintf("server = %q\nca = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n  override_path = true\n", e.url(fUp), nodeCA, e.url(fMirror)+"/v2", nodeCA)
				return nodeConfig{registry: configPath(rt.ConfigVersion, certsD), files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", h)}
			},
			modes: map[string]registryfront.Mode{fUp: registryfront.Down},
			pulls: []pull{up(imApp)},
		},
		{
			name: "colon config_path, host dir in the first root",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{registry: configPath(rt.ConfigVersion, certsD+":"+dockerCertsD), files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA))}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "colon config_path, host dir in the second root",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{registry: configPath(rt.ConfigVersion, certsD+":"+dockerCertsD), files: withHosts(dockerCertsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA))}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "colon config_path, second root, use_local_image_pull",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry:    configPath(rt.ConfigVersion, certsD+":"+dockerCertsD),
					imagesExtra: "    use_local_image_pull = true",
					files:       withHosts(dockerCertsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA)),
				}
			},
			pulls: []pull{up(imApp)},
			only:  transfer,
		},
		{
			name: "no config_path: the CA only in certs.d/<host>/ca.crt",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{files: withHosts(certsD+"/"+e.host(fUp)+"/ca.crt", string(e.caPEM))}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "no config_path: hosts.toml in certs.d",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA))}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "config_path only in an imports drop-in (with its version)",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					topLevel: `imports = ["/etc/containerd/conf.d/*.toml"]`,
					files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA),
						"/etc/containerd/conf.d/registry.toml", fmt.Sprintf("version = %d\n", rt.ConfigVersion)+configPath(rt.ConfigVersion, certsD)),
				}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "config_path only in an imports drop-in (no version line)",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					topLevel: `imports = ["/etc/containerd/conf.d/*.toml"]`,
					files: withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA),
						"/etc/containerd/conf.d/registry.toml", configPath(rt.ConfigVersion, certsD)),
				}
			},
			pulls: []pull{up(imApp)},
		},
		{
			name: "legacy registry.mirrors and configs tls",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				v := rt.ConfigVersion
				return nodeConfig{registry: mirrorsTOML(v, e.host(fUp), e.url(fMirror)) + tlsTOML(v, e.host(fMirror), nodeCA) + tlsTOML(v, e.host(fUp), nodeCA)}
			},
			pulls: []pull{up(imApp), up(imUpOnly)},
		},
		{
			name: `legacy registry.mirrors "*"`,
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				v := rt.ConfigVersion
				return nodeConfig{registry: mirrorsTOML(v, "*", e.url(fMirror)) + tlsTOML(v, e.host(fMirror), nodeCA) + tlsTOML(v, e.host(fUp), nodeCA)}
			},
			modes: map[string]registryfront.Mode{fUp: registryfront.Down},
			pulls: []pull{up(imApp)},
		},
		{
			name: "legacy registry.mirrors endpoint without a scheme",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				v := rt.ConfigVersion
				return nodeConfig{registry: mirrorsTOML(v, e.host(fUp), e.host(fMirror)) + tlsTOML(v, e.host(fMirror), nodeCA) + tlsTOML(v, e.host(fUp), nodeCA)}
			},
			modes: map[string]registryfront.Mode{fUp: registryfront.Down},
			pulls: []pull{up(imApp)},
		},
		{
			name: "legacy configs tls ca_file, no config_path",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{registry: tlsTOML(rt.ConfigVersion, e.host(fUp), nodeCA)}
			},
			pulls: []pull{up(imApp), up(imGone)},
		},
		{
			name: "credentials in the runtime's config, CA in hosts.toml",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD) + authTOML(rt.ConfigVersion, e.host(fAuth)),
					files:    withHosts(certsD+"/"+e.host(fAuth)+"/hosts.toml", e.hostsTOML(fAuth, nodeCA)),
				}
			},
			pulls: []pull{{front: fAuth, image: imPrivate}},
		},
		{
			name: "credentials and CA in the runtime's legacy configs, no config_path",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{registry: authTOML(rt.ConfigVersion, e.host(fAuth)) + tlsTOML(rt.ConfigVersion, e.host(fAuth), nodeCA)}
			},
			pulls: []pull{{front: fAuth, image: imPrivate}},
		},
		{
			name:   "the kubelet's credentials right",
			config: authWithCA,
			pulls:  []pull{{front: fAuth, image: imPrivate, user: regUser, pass: regPass}},
		},
		{
			name:   "the kubelet's credentials wrong",
			config: authWithCA,
			pulls:  []pull{{front: fAuth, image: imPrivate, user: regUser, pass: "wrong-password"}},
		},
		{
			name:   "no credentials anywhere",
			config: authWithCA,
			pulls:  []pull{{front: fAuth, image: imPrivate}},
		},
		{
			name: "no registry configuration: plain HTTP and loopback registries",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{}
			},
			pulls: []pull{{front: fPlain, image: imApp}, {front: fLoPlain, image: imApp}, {front: fLo, image: imApp}, up(imApp)},
		},
		{
			name: "hosts.toml server http:// for a plain-HTTP registry",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fPlain)+"/hosts.toml", e.hostsTOML(fPlain, "")),
				}
			},
			pulls: []pull{{front: fPlain, image: imApp}},
		},
		{
			name:   "upstream rate limited (429, Retry-After)",
			config: hostsWithCA,
			modes:  map[string]registryfront.Mode{fUp: registryfront.RateLimited},
			pulls:  []pull{up(imApp)},
		},
		{
			name:   "upstream answers a malformed Docker-Content-Digest",
			config: hostsWithCA,
			modes:  map[string]registryfront.Mode{fUp: registryfront.BadDigest},
			pulls:  []pull{up(imApp)},
		},
		{
			name:   "upstream hangs",
			config: hostsWithCA,
			modes:  map[string]registryfront.Mode{fUp: registryfront.Hang},
			pulls:  []pull{up(imApp)},
		},
		{
			name:   "upstream answers 503",
			config: hostsWithCA,
			modes:  map[string]registryfront.Mode{fUp: registryfront.ServerError},
			pulls:  []pull{up(imApp)},
		},
		{
			name: "k3s layout: registries.yaml rendered (hosts.toml + configs auth)",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				v := rt.ConfigVersion
				return nodeConfig{
					configFile: k3sDir + "/config.toml",
					registry:   configPath(v, k3sDir+"/certs.d") + authTOML(v, e.host(fAuth)),
					files: withHosts(
						k3sDir+"/certs.d/"+e.host(fAuth)+"/hosts.toml", fmt.Sprintf("# File generated by k3s. DO NOT EDIT.\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = [%q]\n", e.url(fAuth), nodeCA),
						k3sDir+"/certs.d/"+e.host(fUp)+"/hosts.toml", fmt.Sprintf("# File generated by k3s. DO NOT EDIT.\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = [%q]\n", e.url(fUp), nodeCA),
					),
				}
			},
			pulls: []pull{{front: fAuth, image: imPrivate}, up(imApp), up(imGone)},
		},
		{
			name: "hosts.toml client certificate (mTLS registry)",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fMTLS)+"/hosts.toml", e.hostsTOML(fMTLS, nodeCA)+clientTOML),
				}
			},
			pulls: []pull{{front: fMTLS, image: imApp}},
		},
		{
			name: "mTLS registry, hosts.toml without the client certificate",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fMTLS)+"/hosts.toml", e.hostsTOML(fMTLS, nodeCA)),
				}
			},
			pulls: []pull{{front: fMTLS, image: imApp}},
		},
		{
			name: "hosts.toml [header] a gateway wants",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fGate)+"/hosts.toml", e.hostsTOML(fGate, nodeCA)+e.headerTOML(fGate)),
				}
			},
			pulls: []pull{{front: fGate, image: imApp}},
		},
		{
			name: "gateway without its header (403)",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					registry: configPath(rt.ConfigVersion, certsD),
					files:    withHosts(certsD+"/"+e.host(fGate)+"/hosts.toml", e.hostsTOML(fGate, nodeCA)),
				}
			},
			pulls: []pull{{front: fGate, image: imApp}},
		},
		{
			name: "legacy registry.headers with the gateway's header",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				v := rt.ConfigVersion
				return nodeConfig{
					registry: configPath(v, certsD) + fmt.Sprintf("[%s.headers]\n  %s = [%q]\n", reg(v), gateHeader, gateValue),
					files:    withHosts(certsD+"/"+e.host(fGate)+"/hosts.toml", e.hostsTOML(fGate, nodeCA)),
				}
			},
			pulls: []pull{{front: fGate, image: imApp}},
		},
		{
			name:   "bearer-token registry: the kubelet's credentials right",
			config: hostsWithCA,
			pulls:  []pull{{front: fToken, image: imToken, user: regUser, pass: regPass}},
		},
		{
			name:   "bearer-token registry: the kubelet's credentials wrong",
			config: hostsWithCA,
			pulls:  []pull{{front: fToken, image: imToken, user: regUser, pass: "wrong-password"}},
		},
		{
			name:   "bearer-token registry: no credentials (an anonymous token grants nothing)",
			config: hostsWithCA,
			pulls:  []pull{{front: fToken, image: imToken}},
		},
		{
			name: "a version 2 config that 2.x migrates",
			config: func(e *env, rt runtimes.Containerd) nodeConfig {
				return nodeConfig{
					version:  2,
					registry: configPath(2, certsD),
					files:    withHosts(certsD+"/"+e.host(fUp)+"/hosts.toml", e.hostsTOML(fUp, nodeCA)),
				}
			},
			pulls: []pull{up(imApp), up(imGone)},
			only:  v2x,
		},
	}
}
