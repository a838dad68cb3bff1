// Package deploy_test checks deploy/*.yaml and the Dockerfiles against each
// other and against the binaries they run: every manifest decodes strictly
// as a Kubernetes object, every flag and PULLWATCH_* variable a container
// sets is one its binary has (read from the binary's own --help), the
// Service and probes point at the ports the aggregator listens on, the
// agent reaches the aggregator's Service, and each image's ENTRYPOINT is the
// binary its build stage writes.
//
// Needs the Go toolchain (the binaries are built from ../../agent and
// ../../aggregator) and nothing else; no cluster, no Docker. The one
// exception, TestAggregatorDashboardQueries (dashboard_test.go), runs the
// shipped alerting rules and Grafana dashboards on a real Prometheus that
// scrapes a real aggregator on the shared lab (harness/lab): it needs root
// and the real parts, and skips without them.
package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/agent/pkg/discovery"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
)

const (
	namespace      = "pullwatch"
	agentName      = "pullwatch-agent"
	aggregatorName = "pullwatch-aggregator"
	kustomization  = "kustomization.yaml"
	// criSocketVolume is the chart's agent.criSocket volume (one socket).
	criSocketVolume = "cri-socket"
)

// The repository root, found from this package's directory (go test runs
// a test binary in its package's directory).
var repoRoot = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		return "", fmt.Errorf("repository root %s: %w", root, err)
	}
	return root, nil
})

func root(t *testing.T) string {
	t.Helper()
	r, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// strict decodes YAML or JSON into typed objects of client-go's scheme and
// fails on unknown and duplicate fields.
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// object is one decoded document of a manifest file.
type object struct {
	file string // base name in deploy/
	doc  int    // 0-based document index in the file
	obj  runtime.Object
}

func (o object) String() string {
	m, _ := meta.Accessor(o.obj)
	return fmt.Sprintf("%s#%d %s %s", o.file, o.doc, o.obj.GetObjectKind().GroupVersionKind().Kind, m.GetName())
}

// splitDocuments returns the non-empty YAML documents of data.
func splitDocuments(data []byte) ([][]byte, error) {
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		// A document of only comments (or nothing) is null.
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
			continue
		}
		docs = append(docs, doc)
	}
}

// decodeAll strictly decodes every document of data.
func decodeAll(file string, data []byte) ([]object, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var objs []object
	for i, doc := range docs {
		obj, err := decodeMonitoring(doc)
		if err == nil && obj == nil {
			obj, _, err = strict.Decode(doc, nil, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", file, i, err)
		}
		objs = append(objs, object{file: file, doc: i, obj: obj})
	}
	return objs, nil
}

// The Prometheus operator's kinds are not in client-go's scheme. They are
// decoded strictly into the part of their schema deploy/ uses, and kept as
// Unstructured objects for the checks on names and namespaces.
type monitoringMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
}

type serviceMonitor struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   monitoringMeta `json:"metadata"`
	Spec       struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			// HonorLabels keeps the metrics' own namespace, pod and
			// container labels (risk and compatibility families).
			HonorLabels bool `json:"honorLabels,omitempty"`
			// The scraper's own ServiceAccount token, for --http-auth.
			BearerTokenFile string `json:"bearerTokenFile,omitempty"`
			Authorization   *struct {
				Type        string                    `json:"type,omitempty"`
				Credentials *corev1.SecretKeySelector `json:"credentials,omitempty"`
			} `json:"authorization,omitempty"`
			// https, verified with the aggregator's CA (--http-tls).
			Scheme    string `json:"scheme,omitempty"`
			TLSConfig *struct {
				CA struct {
					ConfigMap *corev1.ConfigMapKeySelector `json:"configMap,omitempty"`
				} `json:"ca"`
				ServerName string `json:"serverName,omitempty"`
			} `json:"tlsConfig,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   monitoringMeta `json:"metadata"`
	Spec       struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert,omitempty"`
				Record      string            `json:"record,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// decodeMonitoring decodes a monitoring.coreos.com/v1 document, or returns
// nil, nil for any other.
func decodeMonitoring(doc []byte) (runtime.Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	if tm.APIVersion != "monitoring.coreos.com/v1" {
		return nil, nil
	}
	var typed any
	switch tm.Kind {
	case "ServiceMonitor":
		typed = &serviceMonitor{}
	case "PrometheusRule":
		typed = &prometheusRule{}
	default:
		return nil, fmt.Errorf("monitoring.coreos.com/v1 kind %q is not modelled by this test", tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, typed); err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(doc, &u.Object); err != nil {
		return nil, err
	}
	return u, nil
}

var loadManifests = sync.OnceValues(func() ([]object, error) {
	r, err := repoRoot()
	if err != nil {
		return nil, err
	}
	files, err := manifestFiles(r)
	if err != nil {
		return nil, err
	}
	var all []object
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(r, "deploy", f))
		if err != nil {
			return nil, err
		}
		objs, err := decodeAll(f, data)
		if err != nil {
			return nil, err
		}
		if len(objs) == 0 {
			return nil, fmt.Errorf("deploy/%s has no object", f)
		}
		all = append(all, objs...)
	}
	return all, nil
})

// manifestFiles are the base names of deploy/*.yaml but kustomization.yaml.
func manifestFiles(root string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(root, "deploy", "*.yaml"))
	if err != nil {
		return nil, err
	}
	var files []string
	for _, p := range paths {
		if b := filepath.Base(p); b != kustomization {
			files = append(files, b)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no manifests in %s", filepath.Join(root, "deploy"))
	}
	sort.Strings(files)
	return files, nil
}

func manifests(t *testing.T) []object {
	t.Helper()
	objs, err := loadManifests()
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// only returns the single object of type T named name.
func only[T runtime.Object](t *testing.T, name string) T {
	t.Helper()
	var found []T
	for _, o := range manifests(t) {
		if v, ok := o.obj.(T); ok {
			if m, _ := meta.Accessor(v); m.GetName() == name {
				found = append(found, v)
			}
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T named %q in deploy/, found %d", zero, name, len(found))
	}
	return found[0]
}

func all[T runtime.Object](t *testing.T) []T {
	t.Helper()
	var found []T
	for _, o := range manifests(t) {
		if v, ok := o.obj.(T); ok {
			found = append(found, v)
		}
	}
	return found
}

// workload is the pod-running part of a DaemonSet or Deployment.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	template   *corev1.PodTemplateSpec
}

func workloads(t *testing.T) []workload {
	t.Helper()
	var ws []workload
	for _, ds := range all[*appsv1.DaemonSet](t) {
		ws = append(ws, workload{"DaemonSet", ds.Name, ds.Spec.Selector, &ds.Spec.Template})
	}
	for _, d := range all[*appsv1.Deployment](t) {
		ws = append(ws, workload{"Deployment", d.Name, d.Spec.Selector, &d.Spec.Template})
	}
	if len(ws) == 0 {
		t.Fatal("no DaemonSet or Deployment in deploy/")
	}
	return ws
}

func containerNamed(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	if name == "" && len(spec.Containers) == 1 {
		return &spec.Containers[0]
	}
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// --- the binaries and their --help ---------------------------------------

// binDir holds the binaries built for this test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pullwatch-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := lab.Run(m) // dashboard_test.go runs on the shared lab
	os.RemoveAll(dir)
	os.Exit(code)
}

// modules maps each binary to the module directory that builds it.
var modules = map[string]string{
	agentName:      "agent",
	aggregatorName: "aggregator",
}

var builds sync.Map // binary name -> func() (string, error)

// binary builds (once per test run) and returns the path of a pullwatch
// binary, from the module source in this repository.
func binary(t *testing.T, name string) string {
	t.Helper()
	mod, ok := modules[name]
	if !ok {
		t.Fatalf("no module builds %q (known: %v)", name, slices.Sorted(mapKeys(modules)))
	}
	f, _ := builds.LoadOrStore(name, sync.OnceValues(func() (string, error) {
		r, err := repoRoot()
		if err != nil {
			return "", err
		}
		out := filepath.Join(binDir, name)
		cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
		cmd.Dir = filepath.Join(r, mod)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/%s in %s: %v\n%s", name, cmd.Dir, err, b)
		}
		return out, nil
	}))
	path, err := f.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// flagHelp is one flag as --help describes it.
type flagHelp struct {
	name   string
	typ    string // "" for a boolean flag
	env    string
	def    string
	hasDef bool
}

// help is a command's --help, parsed.
type help struct {
	text  string
	flags map[string]flagHelp // by flag name
	envs  map[string]string   // environment variable -> flag name
}

var (
	flagLine = regexp.MustCompile(`^  --([A-Za-z0-9][A-Za-z0-9_.-]*)(?: (.*))?$`)
	envLine  = regexp.MustCompile(`^\s+\(env ([A-Z_][A-Z0-9_]*)(?:, default (.*))?\)$`)
)

// parseHelp reads the "  --flag type / usage / (env VAR, default D)" blocks
// that pkg/envflag and the aggregator's options print.
func parseHelp(text string) (help, error) {
	h := help{text: text, flags: map[string]flagHelp{}, envs: map[string]string{}}
	var cur *flagHelp
	for line := range strings.Lines(text) {
		line = strings.TrimRight(line, "\r\n")
		if m := flagLine.FindStringSubmatch(line); m != nil {
			cur = &flagHelp{name: m[1], typ: strings.TrimSpace(m[2])}
			continue
		}
		if m := envLine.FindStringSubmatch(line); m != nil && cur != nil {
			cur.env, cur.def, cur.hasDef = m[1], m[2], strings.Contains(line, ", default ")
			h.flags[cur.name] = *cur
			h.envs[cur.env] = cur.name
			cur = nil
		}
	}
	if len(h.flags) == 0 {
		return h, errors.New("no flags found in --help output")
	}
	return h, nil
}

var helps sync.Map // binary + args -> func() (help, error)

// helpOf runs `<binary> <subcommands...> --help` and parses its output.
func helpOf(t *testing.T, name string, subcommands []string) help {
	t.Helper()
	bin := binary(t, name)
	key := strings.Join(append([]string{name}, subcommands...), " ")
	f, _ := helps.LoadOrStore(key, sync.OnceValues(func() (help, error) {
		cmd := exec.Command(bin, append(slices.Clone(subcommands), "--help")...)
		// The binaries read their flags from the environment too; --help
		// must not depend on this process' environment.
		cmd.Env = []string{}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return help{}, fmt.Errorf("%s --help: %v\nstdout:\n%s\nstderr:\n%s", key, err, stdout.String(), stderr.String())
		}
		h, err := parseHelp(stdout.String())
		if err != nil {
			return help{}, fmt.Errorf("%s --help: %v\n%s", key, err, stdout.String())
		}
		return h, nil
	}))
	h, err := f.(func() (help, error))()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// imageBinary is the binary an image runs: the last path element of its
// repository (ghcr.io/pullwatch/pullwatch-agent:tag@sha256:... ->
// pullwatch-agent).
func imageBinary(image string) string {
	repo, _, _ := strings.Cut(image, "@")
	last := repo[strings.LastIndex(repo, "/")+1:]
	name, _, _ := strings.Cut(last, ":")
	return name
}

// imageRepository is image without its tag and digest.
func imageRepository(image string) string {
	repo, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return repo
}

// invocation is how a container calls its binary: the leading subcommands
// of args and the flags after them.
type invocation struct {
	binary      string
	subcommands []string
	flags       []argFlag
}

type argFlag struct {
	name, value string
	hasValue    bool
}

// parseArgs splits args into subcommands and flags the way Go's flag
// package reads them (-f, --f, -f=v, --f=v, and -f v for non-boolean flags).
func parseArgs(t *testing.T, bin string, args []string) invocation {
	t.Helper()
	inv := invocation{binary: bin}
	i := 0
	for ; i < len(args) && !strings.HasPrefix(args[i], "-"); i++ {
		inv.subcommands = append(inv.subcommands, args[i])
	}
	h := helpOf(t, bin, inv.subcommands)
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			t.Errorf("%s: args after %q: %q (the binaries take no positional arguments)", bin, a, args[i+1:])
			break
		}
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: unexpected positional argument %q (the binaries take flags only)", bin, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := argFlag{name: name, value: value, hasValue: hasValue}
		if fh, ok := h.flags[name]; ok && !hasValue && fh.typ != "" && i+1 < len(args) {
			i++
			f.value, f.hasValue = args[i], true
		}
		inv.flags = append(inv.flags, f)
	}
	return inv
}

// setting is the effective value of a flag for a container: from its args,
// else from a literal environment variable, else the binary's default.
func setting(t *testing.T, c *corev1.Container, inv invocation, flag string) string {
	t.Helper()
	h := helpOf(t, inv.binary, inv.subcommands)
	fh, ok := h.flags[flag]
	if !ok {
		t.Fatalf("%s %v has no --%s", inv.binary, inv.subcommands, flag)
	}
	for _, f := range slices.Backward(inv.flags) {
		if f.name == flag {
			return f.value
		}
	}
	for _, e := range c.Env {
		if e.Name == fh.env {
			if e.ValueFrom != nil {
				t.Fatalf("%s: %s comes from valueFrom; this test needs a literal value", c.Name, e.Name)
			}
			if e.Value != "" {
				return e.Value
			}
		}
	}
	if !fh.hasDef {
		t.Fatalf("%s --%s: not set and no default in --help", inv.binary, flag)
	}
	return fh.def
}

func invocationOf(t *testing.T, c *corev1.Container) invocation {
	t.Helper()
	bin := imageBinary(c.Image)
	if _, ok := modules[bin]; !ok {
		t.Fatalf("container %s: image %q runs no pullwatch binary", c.Name, c.Image)
	}
	return parseArgs(t, bin, c.Args)
}

// listenPort is the port of a host:port flag value.
func listenPort(t *testing.T, value string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(value)
	if err != nil {
		t.Fatalf("listen address %q: %v", value, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("listen address %q: %v", value, err)
	}
	return int32(n)
}

// containerPort resolves a probe's or Service's target port (a name or a
// number) against a container's ports.
func containerPort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// --- manifests ------------------------------------------------------------

func TestStrictDecoderRejectsUnknownFields(t *testing.T) {
	// The decoding below is only worth something if typos fail it.
	bad := []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  prots: []\n")
	_, err := decodeAll("bad.yaml", bad)
	if err == nil || !runtime.IsStrictDecodingError(errors.Unwrap(err)) {
		t.Fatalf("decoding a Service with an unknown field: err = %v, want a strict decoding error", err)
	}
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := manifests(t) // fails on any unknown or duplicate field
	seen := map[string]string{}
	for _, o := range objs {
		m, err := meta.Accessor(o.obj)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		gvk := o.obj.GetObjectKind().GroupVersionKind()
		if errs := validation.IsDNS1123Subdomain(m.GetName()); len(errs) > 0 {
			t.Errorf("%s: name: %v", o, errs)
		}
		key := gvk.GroupKind().String() + "/" + m.GetNamespace() + "/" + m.GetName()
		if prev, dup := seen[key]; dup {
			t.Errorf("%s: also defined in %s", o, prev)
		}
		seen[key] = o.String()
		clusterScoped := slices.Contains([]string{"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}, gvk.Kind)
		switch {
		case clusterScoped && m.GetNamespace() != "":
			t.Errorf("%s: cluster-scoped object with namespace %q", o, m.GetNamespace())
		case !clusterScoped && m.GetNamespace() != namespace:
			t.Errorf("%s: namespace %q, want %q", o, m.GetNamespace(), namespace)
		}
	}
	ns := only[*corev1.Namespace](t, namespace)
	// hostNetwork and hostPath need the privileged Pod Security level.
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace %s: pod-security.kubernetes.io/enforce = %q, want privileged (the agent uses hostNetwork and hostPath)", namespace, got)
	}
}

// kustomizationFile is the part of a Kustomization this repository uses;
// decoding it strictly catches anything else.
type kustomizationFile struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

// readKustomization is deploy/'s kustomization, strictly decoded.
func readKustomization(t *testing.T) kustomizationFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root(t), "deploy", kustomization))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomizationFile
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("deploy/%s: %v", kustomization, err)
	}
	return k
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	r := root(t)
	k := readKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("deploy/%s: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", kustomization, k.APIVersion, k.Kind)
	}
	files, err := manifestFiles(r)
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, files) {
		t.Errorf("deploy/%s resources = %v, want every other deploy/*.yaml: %v", kustomization, got, files)
	}
	if dup := slices.Compact(slices.Clone(got)); len(dup) != len(got) {
		t.Errorf("deploy/%s lists a resource twice: %v", kustomization, k.Resources)
	}

	// images: entries must name the repositories the manifests use, or
	// `kustomize edit set image` silently changes nothing.
	used := map[string]bool{}
	for _, w := range workloads(t) {
		for _, c := range w.template.Spec.Containers {
			used[imageRepository(c.Image)] = true
		}
	}
	for _, im := range k.Images {
		if !used[im.Name] {
			t.Errorf("deploy/%s images: %q is not an image of any container (have %v)", kustomization, im.Name, slices.Sorted(mapKeys(used)))
		}
	}
}

func TestKustomizeBuild(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH; kustomize rendering not checked")
	}
	out, err := exec.Command(kubectl, "kustomize", filepath.Join(root(t), "deploy")).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl kustomize deploy/: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("kubectl kustomize deploy/: %v", err)
	}
	rendered, err := decodeAll("kubectl kustomize deploy/", out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rendered), len(manifests(t)); got != want {
		t.Errorf("kubectl kustomize deploy/ renders %d objects, deploy/*.yaml hold %d", got, want)
	}
}

func TestWorkloadSelectorsMatchTemplates(t *testing.T) {
	for _, w := range workloads(t) {
		t.Run(w.kind+"/"+w.name, func(t *testing.T) {
			sel, err := metav1.LabelSelectorAsSelector(w.selector)
			if err != nil {
				t.Fatal(err)
			}
			if sel.Empty() || !sel.Matches(labels.Set(w.template.Labels)) {
				t.Errorf("selector %v does not match the pod template's labels %v", w.selector, w.template.Labels)
			}
			sa := w.template.Spec.ServiceAccountName
			if sa == "" {
				t.Errorf("no serviceAccountName (would run as the namespace's default service account)")
			} else {
				only[*corev1.ServiceAccount](t, sa)
			}
			for _, c := range w.template.Spec.Containers {
				for _, p := range c.Ports {
					if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
						t.Errorf("container %s port %q: %v", c.Name, p.Name, errs)
					}
				}
			}
		})
	}
}

// TestContainerFlagsExist checks that every flag in a container's args and
// every PULLWATCH_* variable in its environment is one its binary has,
// according to the binary's own --help.
func TestContainerFlagsExist(t *testing.T) {
	// Environment variables the Go runtime reads; anything else must be
	// one of the binary's.
	runtimeEnv := []string{"GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG", "GOTRACEBACK"}
	for _, w := range workloads(t) {
		for _, c := range w.template.Spec.Containers {
			t.Run(w.kind+"/"+w.name+"/"+c.Name, func(t *testing.T) {
				if len(c.Command) > 0 {
					t.Errorf("command %q overrides the image's ENTRYPOINT; use args", c.Command)
				}
				inv := invocationOf(t, &c)
				h := helpOf(t, inv.binary, inv.subcommands)
				for _, f := range inv.flags {
					fh, ok := h.flags[f.name]
					switch {
					case !ok:
						t.Errorf("args: --%s is not a flag of %s %v", f.name, inv.binary, inv.subcommands)
					case fh.typ != "" && !f.hasValue:
						t.Errorf("args: --%s needs a value (%s)", f.name, fh.typ)
					}
				}
				for _, e := range c.Env {
					_, known := h.envs[e.Name]
					switch {
					case known:
					case strings.HasPrefix(e.Name, "PULLWATCH_"):
						t.Errorf("env %s is no flag's variable in `%s %s --help`", e.Name, inv.binary, strings.Join(inv.subcommands, " "))
					case !slices.Contains(runtimeEnv, e.Name):
						t.Errorf("env %s is read by neither %s nor the Go runtime", e.Name, inv.binary)
					}
				}
			})
		}
	}
}

// --- the agent --------------------------------------------------------------

func TestAgentDaemonSet(t *testing.T) {
	ds := only[*appsv1.DaemonSet](t, agentName)
	spec := &ds.Spec.Template.Spec
	c := containerNamed(t, spec, "")
	inv := invocationOf(t, c)

	checks := []struct {
		name string
		ok   bool
		msg  string
	}{
		{"binary", inv.binary == agentName, fmt.Sprintf("image %q, want %s", c.Image, agentName)},
		{"run command", slices.Equal(inv.subcommands, []string{"run"}), fmt.Sprintf("subcommands %q, want [run]", inv.subcommands)},
		{"hostNetwork", spec.HostNetwork, "hostNetwork must be true: the agent probes registries from the node's network path"},
		{"dnsPolicy", spec.DNSPolicy == corev1.DNSDefault, fmt.Sprintf("dnsPolicy %q, want Default (the node's resolver; the aggregator is found through EndpointSlices, not cluster DNS)", spec.DNSPolicy)},
		{"token", spec.AutomountServiceAccountToken != nil && *spec.AutomountServiceAccountToken, "automountServiceAccountToken must be true: the agent finds the aggregator through its EndpointSlices"},
		{"liveness probe", c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/healthz" && c.LivenessProbe.HTTPGet.Port.String() == "health", "want an httpGet /healthz liveness probe on the health port"},
		{"readiness probe", c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/readyz" && c.ReadinessProbe.HTTPGet.Port.String() == "health", "want an httpGet /readyz readiness probe on the health port"},
		{"rolling update", ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType && ds.Spec.UpdateStrategy.RollingUpdate != nil && ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable != nil,
			fmt.Sprintf("updateStrategy %+v, want RollingUpdate with maxUnavailable", ds.Spec.UpdateStrategy)},
		{"health port", len(c.Ports) == 1 && c.Ports[0].Name == "health" && envValue(c, "PULLWATCH_HTTP_LISTEN") == fmt.Sprintf(":%d", c.Ports[0].ContainerPort),
			fmt.Sprintf("ports %+v: want exactly the health port, the one PULLWATCH_HTTP_LISTEN listens on", c.Ports)},
	}
	for _, ck := range checks {
		if !ck.ok {
			t.Errorf("%s: %s", ck.name, ck.msg)
		}
	}

	t.Run("tolerates every taint", func(t *testing.T) {
		if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool {
			return tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == "" && tol.TolerationSeconds == nil
		}) {
			t.Errorf("tolerations %+v: want {operator: Exists} so the agent runs on every node", spec.Tolerations)
		}
	})

	t.Run("NODE_NAME from spec.nodeName", func(t *testing.T) {
		h := helpOf(t, agentName, inv.subcommands)
		fh, ok := h.flags["node-name"]
		if !ok || fh.env != "NODE_NAME" {
			t.Fatalf("agent --node-name's variable is %q, want NODE_NAME", fh.env)
		}
		i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "NODE_NAME" })
		if i < 0 {
			t.Fatal("no NODE_NAME in the agent's env")
		}
		e := c.Env[i]
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Errorf("NODE_NAME = %+v, want valueFrom.fieldRef.fieldPath spec.nodeName", e)
		}
		if slices.ContainsFunc(inv.flags, func(f argFlag) bool { return f.name == "node-name" }) {
			t.Error("--node-name in args overrides NODE_NAME")
		}
	})

	t.Run("CRI sockets", func(t *testing.T) {
		// Every socket PULLWATCH_CRI_ENDPOINT lists lies in a socket
		// directory mounted read-only at its own path, of a type that does
		// not keep the pod from nodes of another runtime (not Socket).
		endpoints := strings.Split(setting(t, c, inv, "cri-endpoint"), ",")
		if len(endpoints) < 3 {
			t.Errorf("CRI endpoints %v: want containerd's, CRI-O's and k3s's sockets (one DaemonSet for every runtime)", endpoints)
		}
		for _, ep := range endpoints {
			sock := strings.TrimPrefix(ep, "unix://")
			mi := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return filepath.Dir(sock) == m.MountPath })
			if mi < 0 {
				t.Errorf("socket %s: its directory is not mounted", sock)
				continue
			}
			m := c.VolumeMounts[mi]
			vi := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
			hp := spec.Volumes[vi].HostPath
			if hp == nil || hp.Path != m.MountPath || hp.Type == nil || *hp.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("socket directory %s: volume %+v, want hostPath of the same path, DirectoryOrCreate", m.MountPath, spec.Volumes[vi].VolumeSource)
			}
			if !m.ReadOnly {
				t.Errorf("socket directory %s is mounted writable", m.MountPath)
			}
		}
		if got := setting(t, c, inv, "runtime-profile"); got != "auto" {
			t.Errorf("runtime profile %q, want auto", got)
		}
	})

	t.Run("host paths", func(t *testing.T) {
		// What the agent may see of the host, each read-only: the CRI
		// socket and the node files of docs/node-path.md ("What the agent
		// reads from the node"; aggregator/deploy_test.go checks the
		// table against the mounts). Extend this list deliberately.
		allowed := []string{
			"/run/containerd", "/var/run/crio", "/run/k3s/containerd",
			"/etc/containerd", "/etc/docker/certs.d", "/etc/containers",
			"/lib/systemd/system", "/usr/lib/systemd/system", "/usr/local/lib/systemd/system",
			"/etc/systemd/system/containerd.service.d", "/etc/systemd/system/crio.service.d",
			"/etc/resolv.conf",
			"/etc/ssl/certs", "/etc/pki/tls/certs", "/etc/pki/ca-trust/extracted",
			"/var/lib/kubelet/config.json", "/root/.docker",
		}
		// The one writable host path: the agent's flap-damping state file
		// (--state-file), so "since" survives restarts.
		const stateDir = "/var/lib/pullwatch"
		allowed = append(allowed, stateDir)
		for _, v := range spec.Volumes {
			if v.HostPath == nil {
				continue
			}
			if !slices.Contains(allowed, v.HostPath.Path) {
				t.Errorf("volume %s: hostPath %s is not one the agent needs (%v)", v.Name, v.HostPath.Path, allowed)
			}
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name && !m.ReadOnly && v.HostPath.Path != stateDir {
					t.Errorf("hostPath volume %s is mounted writable at %s", v.Name, m.MountPath)
				}
			}
		}
	})
}

// TestAgentReachesAggregator follows PULLWATCH_AGGREGATOR to the Service and
// on to the aggregator's gRPC listener.
func TestAgentReachesAggregator(t *testing.T) {
	ds := only[*appsv1.DaemonSet](t, agentName)
	ac := containerNamed(t, &ds.Spec.Template.Spec, "")
	addr := setting(t, ac, invocationOf(t, ac), "aggregator")
	// kubernetes:///SERVICE.NAMESPACE:PORT, the Service's EndpointSlices.
	tg, err := discovery.ParseTarget(addr)
	if err != nil {
		t.Fatalf("agent --aggregator %q: %v", addr, err)
	}
	if tg.Namespace != namespace {
		t.Errorf("agent --aggregator %q: namespace %q, want %s", addr, tg.Namespace, namespace)
	}
	svc := only[*corev1.Service](t, tg.Service)
	pi := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == tg.Port || strconv.Itoa(int(p.Port)) == tg.Port })
	if pi < 0 {
		t.Fatalf("Service %s has no port %s (agent --aggregator %s)", tg.Service, tg.Port, addr)
	}
	port := svc.Spec.Ports[pi].Port

	d := only[*appsv1.Deployment](t, aggregatorName)
	gc := containerNamed(t, &d.Spec.Template.Spec, "")
	target, ok := containerPort(gc, svc.Spec.Ports[pi].TargetPort)
	if !ok {
		t.Fatalf("Service port %d targets %s, which the aggregator does not declare", port, svc.Spec.Ports[pi].TargetPort.String())
	}
	if grpc := listenPort(t, setting(t, gc, invocationOf(t, gc), "grpc-listen")); target != grpc {
		t.Errorf("agent --aggregator %s reaches container port %d, the aggregator's gRPC listens on %d", addr, target, grpc)
	}
}

// --- the aggregator ---------------------------------------------------------

func TestAggregatorPorts(t *testing.T) {
	d := only[*appsv1.Deployment](t, aggregatorName)
	svc := only[*corev1.Service](t, aggregatorName)
	pod := &d.Spec.Template
	c := containerNamed(t, &pod.Spec, "")
	inv := invocationOf(t, c)
	if inv.binary != aggregatorName {
		t.Fatalf("image %q, want %s", c.Image, aggregatorName)
	}
	grpcPort := listenPort(t, setting(t, c, inv, "grpc-listen"))
	httpPort := listenPort(t, setting(t, c, inv, "http-listen"))

	sel := labels.SelectorFromSet(svc.Spec.Selector)
	if len(svc.Spec.Selector) == 0 || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("Service selector %v does not select the aggregator's pods %v", svc.Spec.Selector, pod.Labels)
	}

	// Service ports: the name says which listener; port and target are both
	// the listener's port.
	wantPorts := map[string]int32{"grpc": grpcPort, "http-metrics": httpPort}
	t.Run("service", func(t *testing.T) {
		if len(svc.Spec.Ports) != len(wantPorts) {
			t.Errorf("Service ports %+v, want exactly %v", svc.Spec.Ports, wantPorts)
		}
		for _, p := range svc.Spec.Ports {
			want, ok := wantPorts[p.Name]
			if !ok {
				t.Errorf("Service port %q: unknown (want %v)", p.Name, wantPorts)
				continue
			}
			target, ok := containerPort(c, p.TargetPort)
			switch {
			case !ok:
				t.Errorf("Service port %s targets %s, which the container does not declare", p.Name, p.TargetPort.String())
			case target != want:
				t.Errorf("Service port %s reaches container port %d, the aggregator listens on %d", p.Name, target, want)
			}
			if p.Port != want {
				t.Errorf("Service port %s is %d, want %d (the listener's port)", p.Name, p.Port, want)
			}
		}
	})

	probes := []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"readiness", c.ReadinessProbe, "/readyz"},
		{"liveness", c.LivenessProbe, "/healthz"},
	}
	for _, pc := range probes {
		t.Run(pc.name+" probe", func(t *testing.T) {
			if pc.probe == nil || pc.probe.HTTPGet == nil {
				t.Fatalf("want an httpGet %s probe on %s", pc.name, pc.path)
			}
			g := pc.probe.HTTPGet
			if g.Path != pc.path {
				t.Errorf("path %q, want %q", g.Path, pc.path)
			}
			if port, ok := containerPort(c, g.Port); !ok || port != httpPort {
				t.Errorf("port %s (= %d), want the HTTP listener's %d", g.Port.String(), port, httpPort)
			}
			if g.Scheme != corev1.URISchemeHTTPS {
				t.Errorf("scheme %q, the aggregator serves HTTPS (PULLWATCH_HTTP_TLS)", g.Scheme)
			}
		})
	}

	t.Run("pod template prometheus annotations", func(t *testing.T) {
		if pod.Annotations["prometheus.io/scrape"] != "true" {
			t.Errorf("prometheus.io/scrape = %q, want \"true\"", pod.Annotations["prometheus.io/scrape"])
		}
		if got := pod.Annotations["prometheus.io/port"]; got != strconv.Itoa(int(httpPort)) {
			t.Errorf("prometheus.io/port = %q, want %d", got, httpPort)
		}
		if p, ok := pod.Annotations["prometheus.io/path"]; ok && p != "/metrics" {
			t.Errorf("prometheus.io/path = %q, want /metrics", p)
		}
		if got := pod.Annotations["prometheus.io/scheme"]; got != "https" {
			t.Errorf("prometheus.io/scheme = %q, want https (PULLWATCH_HTTP_TLS)", got)
		}
	})
	// Annotated once: the pod and its Service both annotated, a stock
	// config's pod and endpoints jobs scrape each replica twice and every
	// alert fires twice.
	t.Run("service has no prometheus annotations", func(t *testing.T) {
		for k := range svc.Annotations {
			if strings.HasPrefix(k, "prometheus.io/") {
				t.Errorf("Service annotation %s: the pod template is annotated already", k)
			}
		}
	})
}

func TestRBAC(t *testing.T) {
	// What each ServiceAccount may do, cluster-wide: resource -> verbs.
	want := map[string]map[string][]string{
		// The aggregator's informers list and watch (aggregator/pkg/kubewatch,
		// aggregator/pkg/lend); it gets the pod of an agent token whose
		// review names no node, and reviews agent and scraper tokens and
		// scrapers' access (aggregator/pkg/authn); it gets the pull secrets
		// it lends, one get each (aggregator/pkg/lend).
		aggregatorName: {"nodes": {"list", "watch"}, "pods": {"get", "list", "watch"}, "replicasets": {"list", "watch"}, "jobs": {"list", "watch"},
			"tokenreviews": {"create"}, "subjectaccessreviews": {"create"}, "secrets": {"get"}},
		// The agent: nothing cluster-wide, no pods, no secrets (its pull
		// secrets are lent by the aggregator).
		agentName: {},
		// The scraper: get on /metrics and / (checked below), no resource.
		"pullwatch-metrics-scraper": {},
	}
	// The API group of each resource.
	groups := map[string]string{"nodes": "", "pods": "", "secrets": "", "replicasets": "apps", "jobs": "batch",
		"tokenreviews": "authentication.k8s.io", "subjectaccessreviews": "authorization.k8s.io"}
	roles := map[string]*rbacv1.ClusterRole{}
	for _, r := range all[*rbacv1.ClusterRole](t) {
		roles[r.Name] = r
	}
	// Namespaced: the agent's list/watch of the aggregator Service's
	// EndpointSlices in the pullwatch namespace (--aggregator
	// kubernetes:///), and the aggregator's scrape token: a token of
	// pullwatch-metrics-scraper only, written into pullwatch-metrics-token
	// only (aggregator/pkg/scrapetoken).
	type rule struct{ group, resource, names, verbs string }
	wantRoles := map[string][]rule{
		agentName:                           {{"discovery.k8s.io", "endpointslices", "", "list,watch"}},
		"pullwatch-aggregator-scrape-token": {{"", "serviceaccounts/token", "pullwatch-metrics-scraper", "create"}, {"", "secrets", "pullwatch-metrics-token", "get,update"}},
	}
	wantSubject := map[string]string{agentName: agentName, "pullwatch-aggregator-scrape-token": aggregatorName}
	rs := all[*rbacv1.Role](t)
	if len(rs) != len(wantRoles) {
		t.Errorf("Roles: %d, want %d", len(rs), len(wantRoles))
	}
	for _, r := range rs {
		var got []rule
		for _, x := range r.Rules {
			for _, res := range x.Resources {
				got = append(got, rule{strings.Join(x.APIGroups, ","), res, strings.Join(x.ResourceNames, ","), strings.Join(x.Verbs, ",")})
			}
		}
		if w, ok := wantRoles[r.Name]; !ok || r.Namespace != namespace || !slices.Equal(got, w) {
			t.Errorf("Role %s/%s: %+v, want %+v", r.Namespace, r.Name, got, wantRoles[r.Name])
		}
	}
	rbs := all[*rbacv1.RoleBinding](t)
	if len(rbs) != len(wantSubject) {
		t.Errorf("RoleBindings: %d, want %d", len(rbs), len(wantSubject))
	}
	for _, rb := range rbs {
		if sa, ok := wantSubject[rb.RoleRef.Name]; !ok || rb.RoleRef.Kind != "Role" || len(rb.Subjects) != 1 ||
			rb.Subjects[0].Name != sa || rb.Subjects[0].Namespace != namespace {
			t.Errorf("RoleBinding %s: roleRef %+v subjects %+v", rb.Name, rb.RoleRef, rb.Subjects)
		}
	}
	// The scraper may read the aggregator's HTTP paths, nothing else.
	const scraper = "pullwatch-metrics-scraper"
	got := map[string]map[string][]string{}
	for sa := range want {
		got[sa] = map[string][]string{}
	}
	for _, b := range all[*rbacv1.ClusterRoleBinding](t) {
		role, ok := roles[b.RoleRef.Name]
		if b.RoleRef.Kind != "ClusterRole" || !ok {
			t.Errorf("ClusterRoleBinding %s: roleRef %+v is not a ClusterRole in deploy/", b.Name, b.RoleRef)
			continue
		}
		for _, s := range b.Subjects {
			if s.Kind != rbacv1.ServiceAccountKind || s.Namespace != namespace {
				t.Errorf("ClusterRoleBinding %s: subject %+v, want a ServiceAccount in %s", b.Name, s, namespace)
				continue
			}
			only[*corev1.ServiceAccount](t, s.Name)
			if got[s.Name] == nil {
				got[s.Name] = map[string][]string{}
			}
			for _, r := range role.Rules {
				if s.Name == scraper && len(r.Resources) == 0 && slices.Equal(r.NonResourceURLs, []string{"/metrics", "/"}) && slices.Equal(r.Verbs, []string{"get"}) {
					continue
				}
				if len(r.NonResourceURLs) > 0 || len(r.ResourceNames) > 0 {
					t.Errorf("ClusterRole %s: unexpected rule %+v", role.Name, r)
				}
				for _, res := range r.Resources {
					if g, ok := groups[res]; !ok || !slices.Equal(r.APIGroups, []string{g}) {
						t.Errorf("ClusterRole %s: %s in apiGroups %q, want [%q]", role.Name, res, r.APIGroups, g)
					}
				}
				for _, res := range r.Resources {
					got[s.Name][res] = slices.Sorted(slices.Values(slices.Concat(got[s.Name][res], r.Verbs)))
				}
			}
		}
	}
	for sa, w := range want {
		if len(got[sa]) != len(w) {
			t.Errorf("ServiceAccount %s may %v, want %v", sa, got[sa], w)
			continue
		}
		for res, verbs := range w {
			if !slices.Equal(slices.Compact(got[sa][res]), verbs) {
				t.Errorf("ServiceAccount %s on %s: verbs %v, want %v", sa, res, got[sa][res], verbs)
			}
		}
	}
}

// TestSecurityContexts checks what both pods share (no privilege, no
// capability, read-only root, RuntimeDefault seccomp) and the one place they
// differ: the agent's uid 0 for the CRI socket.
func TestSecurityContexts(t *testing.T) {
	cases := []struct {
		workload string
		wantUID  int64
		nonRoot  bool
	}{
		{agentName, 0, false}, // owner access to the root-owned CRI socket
		{aggregatorName, 65532, true},
	}
	byName := map[string]workload{}
	for _, w := range workloads(t) {
		byName[w.name] = w
	}
	for _, tc := range cases {
		t.Run(tc.workload, func(t *testing.T) {
			w, ok := byName[tc.workload]
			if !ok {
				t.Fatalf("no workload %s", tc.workload)
			}
			spec := &w.template.Spec
			psc := spec.SecurityContext
			if psc == nil {
				psc = &corev1.PodSecurityContext{}
			}
			if spec.HostPID || spec.HostIPC {
				t.Error("hostPID/hostIPC")
			}
			for _, c := range spec.Containers {
				sc := c.SecurityContext
				if sc == nil {
					t.Fatalf("container %s: no securityContext", c.Name)
				}
				uid := sc.RunAsUser
				if uid == nil {
					uid = psc.RunAsUser
				}
				nonRoot := sc.RunAsNonRoot
				if nonRoot == nil {
					nonRoot = psc.RunAsNonRoot
				}
				seccomp := sc.SeccompProfile
				if seccomp == nil {
					seccomp = psc.SeccompProfile
				}
				checks := []struct {
					name string
					ok   bool
				}{
					{"not privileged", sc.Privileged == nil || !*sc.Privileged},
					{"allowPrivilegeEscalation false", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
					{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
					{"capabilities drop ALL, add none", sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0},
					{"seccomp RuntimeDefault", seccomp != nil && seccomp.Type == corev1.SeccompProfileTypeRuntimeDefault},
					{fmt.Sprintf("runAsUser %d", tc.wantUID), uid != nil && *uid == tc.wantUID},
					{fmt.Sprintf("runAsNonRoot %v", tc.nonRoot), (nonRoot != nil && *nonRoot) == tc.nonRoot},
					{"memory request and limit", !c.Resources.Requests.Memory().IsZero() && !c.Resources.Limits.Memory().IsZero()},
					{"cpu request", !c.Resources.Requests.Cpu().IsZero()},
				}
				for _, ck := range checks {
					if !ck.ok {
						t.Errorf("container %s: want %s", c.Name, ck.name)
					}
				}
				// The image's USER should be what the pod runs as, so a
				// `docker run` of the image behaves the same.
				df := parseDockerfile(t, dockerfileFor(t, imageBinary(c.Image)))
				if u := df.final().user; uid != nil && u != fmt.Sprintf("%d:%d", *uid, *uid) && u != strconv.FormatInt(*uid, 10) {
					t.Errorf("container %s runs as uid %d, its image's USER is %q", c.Name, *uid, u)
				}
			}
		})
	}
}

// --- Dockerfiles --------------------------------------------------------------

type stage struct {
	from, name string
	workdir    string
	copies     [][]string // COPY arguments, flags included
	runs       []string
	env        []string
	expose     []string
	user       string
	entrypoint string // raw
}

type dockerfile struct {
	path   string
	stages []*stage
}

func (d *dockerfile) final() *stage { return d.stages[len(d.stages)-1] }

func (d *dockerfile) stage(name string) *stage {
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

// parseDockerfile reads the instructions this repository's Dockerfiles use;
// continuation lines are joined and comments dropped.
func parseDockerfile(t *testing.T, path string) *dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := &dockerfile{path: path}
	var logical []string
	var cur strings.Builder
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\r\n")
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		logical = append(logical, strings.TrimSpace(cur.String()))
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("%s: ends in a continuation line", path)
	}
	for _, l := range logical {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		if instr != "FROM" && len(d.stages) == 0 {
			if instr == "ARG" {
				continue // before the first FROM
			}
			t.Fatalf("%s: %s before FROM", path, instr)
		}
		var s *stage
		if len(d.stages) > 0 {
			s = d.stages[len(d.stages)-1]
		}
		switch strings.ToUpper(instr) {
		case "FROM":
			f := strings.Fields(rest)
			f = slices.DeleteFunc(f, func(x string) bool { return strings.HasPrefix(x, "--") })
			ns := &stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				ns.name = f[2]
			}
			d.stages = append(d.stages, ns)
		case "WORKDIR":
			if strings.HasPrefix(rest, "/") {
				s.workdir = rest
			} else {
				s.workdir = filepath.Join(s.workdir, rest)
			}
		case "COPY":
			s.copies = append(s.copies, strings.Fields(rest))
		case "RUN":
			s.runs = append(s.runs, rest)
		case "ENV":
			s.env = append(s.env, rest)
		case "EXPOSE":
			s.expose = append(s.expose, strings.Fields(rest)...)
		case "USER":
			s.user = rest
		case "ENTRYPOINT":
			s.entrypoint = rest
		}
	}
	if len(d.stages) == 0 {
		t.Fatalf("%s: no FROM", path)
	}
	return d
}

// dockerfileFor is the Dockerfile of a binary: Dockerfile.agent for
// pullwatch-agent.
func dockerfileFor(t *testing.T, bin string) string {
	t.Helper()
	mod, ok := modules[bin]
	if !ok {
		t.Fatalf("no module builds %q", bin)
	}
	return filepath.Join(root(t), "Dockerfile."+mod)
}

var (
	goBuildRe  = regexp.MustCompile(`\bgo build\b.*\s-o\s+(\S+)\s+(\./cmd/\S+)\s*$`)
	ldflagsXRe = regexp.MustCompile(`-X\s+([^=\s"]+)=`)
	tagsRe     = regexp.MustCompile(`\s-tags[= ]"?([^\s"]+)`)
	replaceRe  = regexp.MustCompile(`(?m)^\s*(?:replace\s+)?\S+(?:\s+\S+)?\s+=>\s+\.\./([A-Za-z0-9_.-]+)\s*$`)
)

func TestDockerfiles(t *testing.T) {
	r := root(t)
	makefile, err := os.ReadFile(filepath.Join(r, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	ignore, err := os.ReadFile(filepath.Join(r, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	ignoreLines := strings.Fields(string(ignore))

	cases := []struct {
		binary  string
		base    string // final stage image, without tag
		exposes bool   // whether the image EXPOSEs the default listen ports
	}{
		{agentName, "gcr.io/distroless/static-debian12", false},
		{aggregatorName, "gcr.io/distroless/static-debian12", true},
	}
	for _, tc := range cases {
		t.Run(tc.binary, func(t *testing.T) {
			mod := modules[tc.binary]
			df := parseDockerfile(t, dockerfileFor(t, tc.binary))
			final := df.final()
			if len(df.stages) < 2 {
				t.Fatalf("%s: want a multi-stage build", df.path)
			}
			if got := imageRepository(final.from); got != tc.base {
				t.Errorf("final stage FROM %s, want %s", final.from, tc.base)
			}

			// ENTRYPOINT ["/x"] <- COPY --from=<build> <out> /x <- go build -o <out> ./cmd/<binary>
			var entry []string
			if err := yaml.Unmarshal([]byte(final.entrypoint), &entry); err != nil || len(entry) == 0 || !strings.HasPrefix(final.entrypoint, "[") {
				t.Fatalf("ENTRYPOINT %s: want the exec form [\"/path\"] (%v)", final.entrypoint, err)
			}
			var from, src string
			for _, cp := range final.copies {
				if len(cp) == 3 && strings.HasPrefix(cp[0], "--from=") && cp[2] == entry[0] {
					from, src = strings.TrimPrefix(cp[0], "--from="), cp[1]
				}
			}
			if from == "" {
				t.Fatalf("no COPY --from=<stage> <binary> %s in the final stage: ENTRYPOINT %s would not exist", entry[0], entry[0])
			}
			build := df.stage(from)
			if build == nil {
				t.Fatalf("COPY --from=%s: no stage named %s", from, from)
			}
			var out, pkg, run string
			for _, rn := range build.runs {
				if m := goBuildRe.FindStringSubmatch(rn); m != nil {
					out, pkg, run = m[1], m[2], rn
				}
			}
			if out == "" {
				t.Fatalf("stage %s: no `go build ... -o <path> ./cmd/...`", from)
			}
			if out != src {
				t.Errorf("stage %s writes %s, the final stage copies %s", from, out, src)
			}
			if pkg != "./cmd/"+tc.binary {
				t.Errorf("stage %s builds %s, want ./cmd/%s", from, pkg, tc.binary)
			}
			if want := "/src/" + mod; build.workdir != want {
				t.Errorf("stage %s builds in %s, want %s (the module directory)", from, build.workdir, want)
			}
			// Static, reproducible, and from the module's own go.mod.
			for _, want := range []string{"-trimpath", "CGO_ENABLED=0", "GOWORK=off"} {
				if !strings.Contains(run, want) && !slices.ContainsFunc(build.env, func(e string) bool { return strings.Contains(e, want) }) {
					t.Errorf("stage %s: %s not set for the build", from, want)
				}
			}

			// The version is stamped into the same variable `make build` uses.
			var makeLine string
			for line := range strings.Lines(string(makefile)) {
				if strings.Contains(line, "./cmd/"+tc.binary) && strings.Contains(line, "go build") {
					makeLine = line
				}
			}
			mx, dx := ldflagsXRe.FindStringSubmatch(makeLine), ldflagsXRe.FindStringSubmatch(run)
			switch {
			case mx == nil:
				t.Errorf("Makefile: no go build of ./cmd/%s with -X", tc.binary)
			case dx == nil:
				t.Errorf("stage %s: no -X <version variable> in ldflags", from)
			case mx[1] != dx[1]:
				t.Errorf("ldflags -X %s, the Makefile stamps %s", dx[1], mx[1])
			}
			// The same build tags (the agent's grpcnotrace, which keeps
			// x/net/trace and html/template out of the binary).
			var mt, dt string
			if m := tagsRe.FindStringSubmatch(makeLine); m != nil {
				mt = m[1]
			}
			if m := tagsRe.FindStringSubmatch(run); m != nil {
				dt = m[1]
			}
			if mt != dt {
				t.Errorf("stage %s builds with -tags %q, the Makefile with -tags %q", from, dt, mt)
			}

			// Every local module the binary's module replaces is in the build
			// context and copied in: its go.mod for the download layer, and
			// its source.
			gomod, err := os.ReadFile(filepath.Join(r, mod, "go.mod"))
			if err != nil {
				t.Fatal(err)
			}
			local := []string{mod}
			for _, m := range replaceRe.FindAllStringSubmatch(string(gomod), -1) {
				local = append(local, m[1])
			}
			for _, dir := range local {
				var hasMod, hasSrc bool
				for _, cp := range build.copies {
					if slices.Contains(cp, dir+"/go.mod") && strings.HasSuffix(cp[len(cp)-1], "/src/"+dir+"/") {
						hasMod = true
					}
					if len(cp) == 2 && strings.TrimSuffix(cp[0], "/") == dir && strings.TrimSuffix(cp[1], "/") == "/src/"+dir {
						hasSrc = true
					}
				}
				if !hasMod || !hasSrc {
					t.Errorf("stage %s: local module %s/ (a replace target of %s/go.mod) not copied: go.mod %v, source %v", from, dir, mod, hasMod, hasSrc)
				}
				if !slices.Contains(ignoreLines, "!"+dir) && !slices.Contains(ignoreLines, "!"+dir+"/") {
					t.Errorf(".dockerignore does not re-include %s/", dir)
				}
			}

			// Ports and user.
			if tc.exposes {
				h := helpOf(t, tc.binary, nil)
				var want []string
				for _, f := range []string{"grpc-listen", "http-listen"} {
					want = append(want, strconv.Itoa(int(listenPort(t, h.flags[f].def))))
				}
				if got := slices.Sorted(slices.Values(final.expose)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
					t.Errorf("EXPOSE %v, the default listen ports are %v", final.expose, want)
				}
			} else if len(final.expose) > 0 {
				t.Errorf("EXPOSE %v: %s listens on no port", final.expose, tc.binary)
			}
			if final.user == "" {
				t.Error("final stage: no USER (say which user, even root)")
			}
		})
	}
}

// TestServiceMonitor: the ServiceMonitor selects the aggregator's Service
// in its namespace and scrapes a port the Service has, at /metrics.
func TestServiceMonitor(t *testing.T) {
	var sms []*serviceMonitor
	for _, o := range manifests(t) {
		u, ok := o.obj.(*unstructured.Unstructured)
		if !ok || u.GetKind() != "ServiceMonitor" {
			continue
		}
		b, err := u.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		sm := &serviceMonitor{}
		if err := yaml.UnmarshalStrict(b, sm); err != nil {
			t.Fatal(err)
		}
		sms = append(sms, sm)
	}
	if len(sms) != 1 {
		t.Fatalf("%d ServiceMonitors in deploy/, want 1", len(sms))
	}
	sm := sms[0]
	svc := only[*corev1.Service](t, aggregatorName)
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not match Service %s labels %v", sel, svc.Name, svc.Labels)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
		t.Errorf("ServiceMonitor namespaceSelector %v, want [%s]", sm.Spec.NamespaceSelector.MatchNames, namespace)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints %+v, want one", sm.Spec.Endpoints)
	}
	ep := sm.Spec.Endpoints[0]
	found := false
	for _, p := range svc.Spec.Ports {
		found = found || p.Name == ep.Port
	}
	if !found || (ep.Path != "" && ep.Path != "/metrics") {
		t.Errorf("ServiceMonitor endpoint port %q path %q, want a port of Service %s and /metrics", ep.Port, ep.Path, svc.Name)
	}
	if !ep.HonorLabels {
		t.Errorf("ServiceMonitor endpoint without honorLabels: the operator's namespace, pod and container target labels would rename the metrics' own to exported_*")
	}
	// The aggregator authenticates scrapes (--http-auth=kubernetes) and
	// wants tokens for audience pullwatch-metrics: the ServiceMonitor sends
	// the token the aggregator keeps in the shipped Secret (authorization,
	// not the deprecated bearerTokenFile), of a ServiceAccount bound to
	// pullwatch-metrics-reader.
	if ep.BearerTokenFile != "" || ep.Authorization == nil || ep.Authorization.Credentials == nil ||
		ep.Authorization.Credentials.Name != "pullwatch-metrics-token" || ep.Authorization.Credentials.Key != "token" {
		t.Errorf("ServiceMonitor endpoint: bearerTokenFile %q, authorization %+v; want authorization.credentials pullwatch-metrics-token/token", ep.BearerTokenFile, ep.Authorization)
	}
	only[*corev1.Secret](t, "pullwatch-metrics-token")
	only[*corev1.ServiceAccount](t, "pullwatch-metrics-scraper")
	binding := only[*rbacv1.ClusterRoleBinding](t, "pullwatch-metrics-scraper")
	if binding.RoleRef.Name != "pullwatch-metrics-reader" || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "pullwatch-metrics-scraper" {
		t.Errorf("ClusterRoleBinding pullwatch-metrics-scraper: %+v %+v", binding.RoleRef, binding.Subjects)
	}
	// The token goes over TLS only (--http-tls), to the certificate of the
	// Service's name under the aggregator's own CA.
	if ep.Scheme != "https" || ep.TLSConfig == nil || ep.TLSConfig.CA.ConfigMap == nil ||
		ep.TLSConfig.CA.ConfigMap.Name != "pullwatch-aggregator-ca" || ep.TLSConfig.CA.ConfigMap.Key != "ca.crt" ||
		ep.TLSConfig.ServerName != aggregatorName+"."+namespace+".svc" {
		t.Errorf("ServiceMonitor endpoint scheme %q tlsConfig %+v: want https verified with ConfigMap pullwatch-aggregator-ca ca.crt for %s.%s.svc",
			ep.Scheme, ep.TLSConfig, aggregatorName, namespace)
	}
	agg := only[*appsv1.Deployment](t, aggregatorName)
	if c := containerNamed(t, &agg.Spec.Template.Spec, "aggregator"); envValue(c, "PULLWATCH_HTTP_TLS") != "true" || envValue(c, "PULLWATCH_TLS_DIR") == "" {
		t.Errorf("the aggregator serves /metrics without TLS (PULLWATCH_HTTP_TLS %q): the ServiceMonitor's token would cross the network in the clear", envValue(c, "PULLWATCH_HTTP_TLS"))
	}
	c := containerNamed(t, &agg.Spec.Template.Spec, "aggregator")
	if envValue(c, "PULLWATCH_HTTP_TOKEN_AUDIENCES") != "pullwatch-metrics" || envValue(c, "PULLWATCH_SCRAPE_TOKEN_SECRET") != namespace+"/pullwatch-metrics-token" {
		t.Errorf("the aggregator's PULLWATCH_HTTP_TOKEN_AUDIENCES %q, PULLWATCH_SCRAPE_TOKEN_SECRET %q: want pullwatch-metrics and %s/pullwatch-metrics-token",
			envValue(c, "PULLWATCH_HTTP_TOKEN_AUDIENCES"), envValue(c, "PULLWATCH_SCRAPE_TOKEN_SECRET"), namespace)
	}
}

// envValue is the literal value of a container's environment variable.
func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}
