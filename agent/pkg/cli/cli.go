// Package cli is pullwatch-agent's command line: the run and check
// commands, their flags (each with an environment variable) and exit codes.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/containerd/platforms"

	"github.com/pullwatch/pullwatch/agent/pkg/credentials"
	"github.com/pullwatch/pullwatch/agent/pkg/cri"
	"github.com/pullwatch/pullwatch/agent/pkg/hostfs"
	"github.com/pullwatch/pullwatch/agent/pkg/hosts"
	"github.com/pullwatch/pullwatch/agent/pkg/netpath"
	"github.com/pullwatch/pullwatch/agent/pkg/probe"
	"github.com/pullwatch/pullwatch/agent/pkg/round"
	"github.com/pullwatch/pullwatch/agent/pkg/runtimeprofile"
	"github.com/pullwatch/pullwatch/pkg/envflag"
	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Exit codes of pullwatch-agent.
const (
	ExitOK          = 0 // check: every image available; run: clean shutdown
	ExitUnavailable = 1 // check: at least one image is not available
	ExitSetup       = 2 // usage or setup error (bad flag, no CRI endpoint, ...)
)

// Version is set at build time with -ldflags "-X .../cli.Version=...".
var Version = "dev"

// Env is what a command sees of the outside world, so tests can run it
// in-process.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	Hostname       func() (string, error)
}

// OSEnv is the real process environment.
func OSEnv() Env {
	return Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Hostname: os.Hostname}
}

const mainUsage = `Usage: pullwatch-agent <command> [flags]

pullwatch-agent runs on every node (a DaemonSet) and tells which container
images this node can no longer pull, and why: it asks the node's container
runtime over CRI which images the node runs and has cached, and asks their
registries for each manifest the way the runtime would (a HEAD; it never
pulls layers, and GETs only an index a moved tag points at, to check the
node's platform).

Commands:
  run       the daemon: check every --interval and stream results to the aggregator
  check     one round on this node; print a table (or JSON with -o json) and exit
            0 when every image is available, 1 when any is not, 2 on a setup error
  version   print the version

Run 'pullwatch-agent <command> --help' for a command's flags.
`

// Main runs the agent's command line and returns the exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, mainUsage)
		return ExitSetup
	}
	switch args[0] {
	case "run":
		return runCommand(ctx, args[1:], env)
	case "check":
		return checkCommand(ctx, args[1:], env)
	case "version", "--version":
		fmt.Fprintln(env.Stdout, "pullwatch-agent", Version)
		return ExitOK
	case "help", "-h", "--help":
		fmt.Fprint(env.Stdout, mainUsage)
		return ExitOK
	default:
		fmt.Fprintf(env.Stderr, "pullwatch-agent: unknown command %q\n\n%s", args[0], mainUsage)
		return ExitSetup
	}
}

// checkRoundTimeout is check's automatic --round-timeout.
const checkRoundTimeout = 2 * time.Minute

// roundDeadline is --round-timeout, or the automatic one for rounds every
// interval (0: check's).
func (c *common) roundDeadline(interval time.Duration) time.Duration {
	switch {
	case c.roundTimeout > 0:
		return c.roundTimeout
	case interval > 0:
		return interval + 30*time.Second
	default:
		return checkRoundTimeout
	}
}

// common are the flags of both run and check.
type common struct {
	criEndpoint        string
	criTimeout         time.Duration
	nodeName           string
	nodeLabels         map[string]string
	probeTimeout       time.Duration
	roundTimeout       time.Duration
	perHostConcurrency int
	concurrency        int
	registryRate       float64
	registryBurst      int
	logLevel           slog.Level
	logFormat          string
	kubeconfig         string

	// The runtime's registry configuration and the node's network path.
	hostRoot           string
	root               hostfs.Root // hostRoot, once validated
	containerdConfig   string
	registryConfigPath string
	registriesConf     string
	registriesConfDir  string
	proxyFrom          string
	runtimeUnit        string
	runtimeEnvFiles    string
	runtimeProfile     string
	resolvConf         string
	// profile is the runtime layout in use, once the runtime answered
	// (setup); explicit are the flags set on the command line or in the
	// environment, which the profile's paths do not replace.
	profile  runtimeprofile.Profile
	explicit map[string]bool

	// Pull credentials, found as the kubelet finds them.
	dockerConfig   string
	pullSecrets    string
	providerConfig string
	providerBinDir string
}

func (c *common) register(s *envflag.Set, env Env) {
	c.criTimeout = 10 * time.Second
	c.probeTimeout = 10 * time.Second
	c.perHostConcurrency = 4
	c.concurrency = 16
	c.registryRate = round.DefaultRegistryRate
	c.registryBurst = round.DefaultRegistryBurst
	c.logFormat = "text"
	c.nodeName, _ = env.Hostname()
	s.StringVar(&c.criEndpoint, "cri-endpoint", "",
		"CRI `endpoint` of the node's container runtime (unix:///path), or several, comma-separated, tried in order (the first that answers is used, and logged). Empty: the --runtime-profile's sockets; auto tries "+strings.Join(runtimeprofile.Endpoints(runtimeprofile.Auto), ", ")+".")
	c.runtimeProfile = runtimeprofile.Auto
	s.Var(&envflag.Choice{Value: &c.runtimeProfile, Choices: runtimeprofile.Names}, "runtime-profile",
		"Where the node's runtime keeps its socket, registry configuration and systemd units (`profile`): auto (from the socket that answers and the files the node has), containerd, k3s, rke2, crio or talos. --cri-endpoint, --containerd-config, --registry-config-path and --runtime-unit set explicitly win over the profile's.")
	s.Var((*envflag.PositiveDuration)(&c.criTimeout), "cri-timeout", "Timeout of each CRI call (`duration`).")
	s.StringVar(&c.nodeName, "node-name", c.nodeName, "`name` of this node as Kubernetes knows it (the DaemonSet sets it from spec.nodeName). Default: the hostname.")
	s.Env("node-name", "NODE_NAME")
	s.Var(&envflag.KeyValues{Value: &c.nodeLabels}, "node-labels", "Labels the agent reports for its node, `key=value,...`, e.g. topology.kubernetes.io/zone=eu-1a. The aggregator prefers the Node object's labels when it reads the Kubernetes API; without it, these give the zone for the failure diagnosis.")
	s.Var((*envflag.PositiveDuration)(&c.probeTimeout), "probe-timeout", "Timeout of one endpoint's probe: /v2/ ping, token and manifest HEAD together (`duration`).")
	s.DurationVar(&c.roundTimeout, "round-timeout", 0, "Longest one round's probes may take (`duration`); an image not checked by then is reported unknown, saying so. 0: automatic, --interval + 30s for run (a round then always ends well inside the liveness window of 3 × --interval + 1m, however slow the registries), "+checkRoundTimeout.String()+" for check.")
	s.Var(&envflag.IntRange{Value: &c.perHostConcurrency, Min: 1, Max: 64}, "per-host-concurrency", "Probes in flight at once against one registry endpoint (`count`, 1-64).")
	s.Var(&envflag.IntRange{Value: &c.concurrency, Min: 1, Max: 256}, "concurrency", "Probes in flight at once in all (`count`, 1-256).")
	s.Float64Var(&c.registryRate, "registry-rate", c.registryRate, "Manifest checks per second to one registry host (`rate`; a token bucket per host, 0: unpaced). With an aggregator, its --registry-budget share applies on top.")
	s.Var(&envflag.IntRange{Value: &c.registryBurst, Min: 1, Max: 10000}, "registry-burst", "Manifest checks to one registry host at once before --registry-rate paces them (`count`).")
	s.Var((*envflag.LogLevel)(&c.logLevel), "log-level", "Least severe `level` to log: debug, info, warn or error.")
	s.Var(&envflag.Choice{Value: &c.logFormat, Choices: []string{"text", "json"}}, "log-format", "Log `format` on stderr: text or json.")
	s.StringVar(&c.kubeconfig, "kubeconfig", "", "`path` to a kubeconfig, used outside a cluster by --aggregator kubernetes:///... (the agent reads only the aggregator's EndpointSlices; pull secrets are lent by the aggregator).")
	s.Env("kubeconfig", "KUBECONFIG")

	c.containerdConfig = hosts.DefaultContainerdConfig
	c.registriesConf = hosts.DefaultRegistriesConf
	c.registriesConfDir = hosts.DefaultRegistriesConfDir
	c.proxyFrom = netpath.ProxyFromSystemd
	c.resolvConf = "/etc/resolv.conf"
	s.StringVar(&c.hostRoot, "host-root", "", "`dir` where the node's / is mounted in the agent's container (e.g. /host); prefixes every node file the agent reads: runtime configuration, systemd units, resolv.conf, pull credentials. Empty: read them in place.")
	s.StringVar(&c.containerdConfig, "containerd-config", c.containerdConfig, "containerd's config.toml (`path`, imports followed): where the registry config_path or legacy mirrors are.")
	s.StringVar(&c.registryConfigPath, "registry-config-path", "", "containerd registry host `dirs` (colon-separated, hosts.toml per host); overrides config_path from --containerd-config. Default: config_path, else "+hosts.DefaultConfigPath+".")
	s.StringVar(&c.registriesConf, "registries-conf", c.registriesConf, "CRI-O's registries.conf (`path`), used when the runtime is CRI-O.")
	s.StringVar(&c.registriesConfDir, "registries-conf-dir", c.registriesConfDir, "CRI-O's registries.conf.d (`dir`).")
	s.Var(&envflag.Choice{Value: &c.proxyFrom, Choices: []string{netpath.ProxyFromSystemd, netpath.ProxyFromEnv, netpath.ProxyFromNone}}, "proxy-from",
		"Where the runtime's proxy settings come from (`source`): systemd (HTTP(S)_PROXY/NO_PROXY in the runtime's unit and drop-ins, see --runtime-unit), env (the agent's own environment) or none.")
	s.StringVar(&c.runtimeUnit, "runtime-unit", "", "The runtime's systemd unit `names` (comma-separated; those present are read) for --proxy-from=systemd, e.g. containerd.service, or k3s.service,k3s-agent.service. Their Environment= lines and the EnvironmentFile= files they name are read. Default: the --runtime-profile's (containerd.service, crio.service, k3s.service,k3s-agent.service, rke2-server.service,rke2-agent.service).")
	s.StringVar(&c.runtimeEnvFiles, "runtime-env-file", "", "More environment files (`paths`, comma-separated, under --host-root; KEY=VALUE lines) the runtime runs with, read after its units' for --proxy-from=systemd, e.g. /etc/default/k3s where the unit itself is not mounted. Missing files are skipped.")
	s.StringVar(&c.resolvConf, "resolv-conf", c.resolvConf, "The node's resolv.conf (`path`, under --host-root): registry names resolve with its nameservers, whatever the agent pod's DNS policy.")

	c.pullSecrets = "on"
	s.StringVar(&c.dockerConfig, "docker-config", "", "The node keyring (`path`, under --host-root): a config.json or .dockercfg file, or a dir holding one. Default: the kubelet's search path, /var/lib/kubelet/config.json first (see docs/credentials.md).")
	s.Var(&envflag.Choice{Value: &c.pullSecrets, Choices: []string{"on", "off"}}, "pull-secrets",
		"Use the imagePullSecrets of the pods on this node (`on|off`), lent by the aggregator (--aggregator; the agent itself has no RBAC on secrets or pods).")
	s.StringVar(&c.providerConfig, "image-credential-provider-config", "", "The kubelet's credential provider config (`path`, under --host-root), as its flag of that name. Empty: no plugins.")
	s.StringVar(&c.providerBinDir, "image-credential-provider-bin-dir", "", "The kubelet's credential provider plugin `dir` (under --host-root), as its flag of that name.")
}

func (c *common) validate() error {
	if c.nodeName == "" {
		return errors.New("no node name: set --node-name (env NODE_NAME)")
	}
	if c.hostRoot != "" {
		// The one node path that must be there: without it nothing the
		// agent reads of the node is. Each file under it is optional
		// but --resolv-conf.
		if st, err := os.Stat(c.hostRoot); err != nil || !st.IsDir() {
			if err == nil {
				err = errors.New("not a directory")
			}
			return fmt.Errorf("--host-root %s: %w: mount the node's files there (deploy/daemonset.yaml mounts them read-only under /host), or leave --host-root (env PULLWATCH_HOST_ROOT) empty to read them in place", c.hostRoot, err)
		}
	}
	c.root = hostfs.New(c.hostRoot)
	return nil
}

// parse parses a command's flags; it returns false and the exit code when
// the command should not go on.
func parse(s *envflag.Set, args []string, env Env, c *common) (int, bool) {
	err := s.Parse(args, env.Getenv, env.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK, false
	}
	if err == nil {
		c.explicit = map[string]bool{}
		s.Visit(func(f *flag.Flag) { c.explicit[f.Name] = true })
		err = c.validate()
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", s.Name(), err)
		return ExitSetup, false
	}
	return 0, true
}

// setup connects to the runtime and builds the checker. lender is the
// aggregator that lends pull secrets, nil without one.
func (c *common) setup(ctx context.Context, log *slog.Logger, lender credentials.Lender) (*round.Checker, *cri.Client, error) {
	c.trustNodeCAs(log)
	creds, err := c.credentials(ctx, log, lender)
	if err != nil {
		return nil, nil, err
	}
	endpoints := runtimeprofile.Endpoints(c.runtimeProfile)
	if c.criEndpoint != "" {
		endpoints = splitList(c.criEndpoint)
	}
	client, err := cri.Dial(ctx, endpoints, c.criTimeout)
	if err != nil {
		return nil, nil, err
	}
	rt, err := client.Version(ctx)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	c.useProfile(runtimeprofile.Detect(c.runtimeProfile, c.root, client.Endpoint(), rt.Name))
	log.Info("connected to the container runtime", "endpoint", client.Endpoint(), "runtime", rt.Name, "version", rt.Version, "node", c.nodeName,
		"profile", c.profile.Name, "containerd_config", c.containerdConfig, "registry_config_path", c.registryConfigPath)
	path, err := c.networkPath(ctx, log, rt.Name)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	resolver, err := c.registryResolver(ctx, log, rt, path)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	platform := platforms.DefaultSpec()
	return &round.Checker{
		NodeName: c.nodeName,
		Platform: platform,
		Labels:   c.nodeLabels,
		Runtime:  client,
		Resolver: resolver,
		Prober: probe.New(probe.Options{
			Timeout:            c.probeTimeout,
			PerHostConcurrency: c.perHostConcurrency,
			UserAgent:          "pullwatch-agent/" + Version,
			Transport:          path.Transport(),
			Platform:           &platform,
			FirstFailure:       probe.RanksFailuresInOrder(rt.Name, rt.Version),
		}),
		Credentials: creds,
		Concurrency: c.concurrency,
		Plan:        round.NewPlan(c.registryRate, c.registryBurst),
	}, client, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// useProfile takes the runtime layout p: its paths for the flags not set
// explicitly.
func (c *common) useProfile(p runtimeprofile.Profile) {
	c.profile = p
	if !c.explicit["containerd-config"] && p.ContainerdConfig != "" {
		c.containerdConfig = p.ContainerdConfig
	}
	if !c.explicit["registry-config-path"] && p.RegistryConfigPath != "" {
		c.registryConfigPath = p.RegistryConfigPath
	}
}

// runtimeUnits are the systemd units read for the runtime's proxy:
// --runtime-unit, else the profile's, else by the runtime's CRI name.
func (c *common) runtimeUnits(runtimeName string) []string {
	if units := splitList(c.runtimeUnit); len(units) > 0 {
		return units
	}
	if len(c.profile.Units) > 0 {
		return c.profile.Units
	}
	if runtimeName == "cri-o" {
		return []string{"crio.service"}
	}
	return []string{"containerd.service"}
}

// credentials builds the pull-credential sources in the kubelet's order.
func (c *common) credentials(ctx context.Context, log *slog.Logger, lender credentials.Lender) (credentials.Chain, error) {
	return credentials.New(ctx, credentials.Options{
		NodeName: c.nodeName, Root: c.root, DockerConfig: c.dockerConfig, PullSecrets: c.pullSecrets == "on", Lender: lender,
		ProviderConfig: c.providerConfig, ProviderBinDir: c.providerBinDir, Log: log,
	})
}

// trustNodeCAs points Go's system trust store at the node's CA bundle
// under --host-root, before any TLS client is made: registry TLS then
// trusts what the runtime on the node trusts. SSL_CERT_FILE or
// SSL_CERT_DIR set for the agent win.
func (c *common) trustNodeCAs(log *slog.Logger) {
	if c.root.Dir() == "" || os.Getenv("SSL_CERT_FILE") != "" || os.Getenv("SSL_CERT_DIR") != "" {
		return
	}
	file, dirs, ok := netpath.NodeTrust(c.root)
	if !ok {
		log.Warn("no CA bundle of the node's under --host-root: registry TLS trusts the agent image's CAs, not the node's; mount the node's /etc/ssl/certs (or /etc/pki) under it",
			"host_root", c.root.Dir(), "looked_for", netpath.CertFiles)
		return
	}
	os.Setenv("SSL_CERT_FILE", file)
	os.Setenv("SSL_CERT_DIR", strings.Join(dirs, ":"))
	log.Info("registry TLS trusts the node's CA bundle", "file", file)
}

// networkPath loads the runtime's proxy and the node's resolver.
func (c *common) networkPath(ctx context.Context, log *slog.Logger, runtimeName string) (netpath.Path, error) {
	var unitFiles []string
	for _, u := range c.runtimeUnits(runtimeName) {
		unitFiles = append(unitFiles, netpath.UnitPaths(u)...)
	}
	proxy, err := netpath.LoadProxyOptions(ctx, netpath.ProxyOptions{
		Source: c.proxyFrom, Root: c.root, UnitFiles: unitFiles, EnvFiles: splitList(c.runtimeEnvFiles),
		Prefix: c.profile.ProxyPrefix, Getenv: os.Getenv,
	})
	if err != nil {
		return netpath.Path{}, fmt.Errorf("runtime proxy settings (--proxy-from=%s): %w", c.proxyFrom, err)
	}
	red := proxy.Redacted()
	log.Info("registry probes use the runtime's proxy settings", "source", red.Source, "http_proxy", red.HTTPProxy, "https_proxy", red.HTTPSProxy, "no_proxy", red.NoProxy)
	path := netpath.Path{Proxy: proxy, Timeout: c.probeTimeout}
	if c.root.Dir() != "" || c.resolvConf != "/etc/resolv.conf" {
		rc := c.root.Path(c.resolvConf)
		if path.Resolver, err = netpath.LoadResolver(rc); err != nil {
			if c.root.Dir() != "" {
				err = fmt.Errorf("%w; with --host-root %s the node's %s must be mounted there (deploy/daemonset.yaml does, read-only)", err, c.root.Dir(), c.resolvConf)
			}
			return netpath.Path{}, err
		}
		log.Info("registry names resolve with the node's nameservers", "resolv_conf", rc, "nameservers", path.Resolver.Nameservers)
	}
	return path, nil
}

// registryResolver reads the runtime's registry configuration. One that
// does not load (a config.toml or registries.conf that does not parse)
// does not stop the agent: every image is unknown with the error, which
// names the file, and the file is read again every minute.
func (c *common) registryResolver(ctx context.Context, log *slog.Logger, rt cri.Runtime, path netpath.Path) (hosts.Resolver, error) {
	var load func(ctx context.Context) (hosts.Resolver, error)
	switch rt.Name {
	case "containerd":
		load = func(ctx context.Context) (hosts.Resolver, error) {
			return hosts.NewContainerd(ctx, hosts.ContainerdOptions{
				ConfigFile:     c.containerdConfig,
				ConfigPath:     c.registryConfigPath,
				Root:           c.root,
				UpdateClient:   path.UpdateClient,
				RuntimeVersion: rt.Version,
			})
		}
	case "cri-o":
		load = func(ctx context.Context) (hosts.Resolver, error) {
			return hosts.NewCRIO(ctx, hosts.CRIOOptions{
				RegistriesConf:    c.registriesConf,
				RegistriesConfDir: c.registriesConfDir,
				Root:              c.root,
				UpdateClient:      path.UpdateClient,
			})
		}
	default:
		log.WarnContext(ctx, "unknown runtime: probing each registry at its default endpoint", "runtime", rt.Name)
		return hosts.Defaults{}, nil
	}
	r := &hosts.Reloading{Load: func(ctx context.Context) (hosts.Resolver, error) {
		res, err := load(ctx)
		if err != nil {
			log.ErrorContext(ctx, "the runtime's registry configuration does not load: every image is unknown until it does (read again every minute)", logging.ErrKey, err)
		}
		return res, err
	}, Retry: time.Minute}
	_, _ = r.Loaded(ctx)
	return r, nil
}

// newLogger builds the logger the flags ask for, routes client-go's and
// containerd's logging into it, and returns it and ctx carrying it.
func newLogger(ctx context.Context, env Env, c *common) (context.Context, *slog.Logger) {
	log := logging.New(env.Stderr, c.logLevel, c.logFormat)
	routeContainerdLogs(log)
	logging.RouteKlog(log)
	return logging.NewContext(ctx, log), log
}
