package deploy_test

// The Helm chart, deploy/helm/pullwatch, against deploy/: with its default
// values `helm template` must render exactly the objects `kubectl apply -k
// deploy/` applies (same kinds, names, namespaces and fields; no Helm
// labels), and the files the chart carries (alerting rules, Grafana
// dashboards) must be byte-equal copies of deploy/rules and deploy/grafana.
// That is what keeps the two installs one source of truth.
//
// helm is the pinned build of scripts/build-helm.sh (make helm), looked up
// in $PULLWATCH_HELM_BIN or <repo>/.cache/helm/bin; without it the tests
// that run helm skip (fail with PULLWATCH_REQUIRE_REAL=1).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

const (
	chartDir    = "deploy/helm/pullwatch"
	releaseName = "pullwatch"
)

// helmBin returns the pinned helm binary, or skips t (fails it under
// PULLWATCH_REQUIRE_REAL=1) when it has not been built.
func helmBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PULLWATCH_HELM_BIN")
	if dir == "" {
		dir = filepath.Join(root(t), ".cache", "helm", "bin")
	}
	bin := filepath.Join(dir, "helm")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		proc.SkipOrFail(t, fmt.Sprintf("no helm binary at %s: run `make helm` (scripts/build-helm.sh builds the pinned helm.sh/helm/v4)", bin))
	}
	return bin
}

// runHelm runs helm with args in the repository root, in a HOME of its
// own (no user repositories, plugins or caches), and returns its stdout.
func runHelm(t *testing.T, args ...string) []byte {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(),
		"HOME="+home,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// helmTemplate renders the chart in namespace pullwatch with extra
// arguments (--set ...).
func helmTemplate(t *testing.T, extra ...string) []byte {
	t.Helper()
	args := append([]string{"template", releaseName, chartDir, "--namespace", namespace}, extra...)
	return runHelm(t, args...)
}

// objectKey names an object the way the API server does.
func objectKey(m map[string]any) string {
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	md, _ := m["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	name, _ := md["name"].(string)
	group, _, found := strings.Cut(apiVersion, "/")
	if !found {
		group = "core"
	}
	if ns == "" {
		ns = "-"
	}
	return fmt.Sprintf("%s.%s %s/%s", kind, group, ns, name)
}

// decodeMaps decodes every document of data into a generic map, keyed by
// objectKey; a key seen twice is an error.
func decodeMaps(what string, data []byte) (map[string]map[string]any, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	objs := map[string]map[string]any{}
	for i, doc := range docs {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", what, i, err)
		}
		k := objectKey(m)
		if _, dup := objs[k]; dup {
			return nil, fmt.Errorf("%s: %s twice", what, k)
		}
		objs[k] = m
	}
	return objs, nil
}

// kustomizeImages applies deploy/kustomization.yaml's images: entries to
// the containers of m, as kustomize does when it renders deploy/.
func kustomizeImages(t *testing.T, k kustomizationFile, m map[string]any) {
	t.Helper()
	spec, _ := m["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	podSpec, _ := tmpl["spec"].(map[string]any)
	for _, field := range []string{"initContainers", "containers"} {
		cs, _ := podSpec[field].([]any)
		for _, c := range cs {
			c := c.(map[string]any)
			image, _ := c["image"].(string)
			for _, im := range k.Images {
				if imageRepository(image) != im.Name {
					continue
				}
				name := im.Name
				if im.NewName != "" {
					name = im.NewName
				}
				repo, digest, _ := strings.Cut(image, "@")
				tag := strings.TrimPrefix(repo[len(imageRepository(image)):], ":")
				if im.NewTag != "" {
					tag = im.NewTag
				}
				if im.Digest != "" {
					tag, digest = "", im.Digest
				}
				image = name
				if tag != "" {
					image += ":" + tag
				}
				if digest != "" {
					image += "@" + digest
				}
				c["image"] = image
			}
		}
	}
}

// deployObjects are the objects of `kubectl apply -k deploy/`: every
// deploy/*.yaml the kustomization lists (TestKustomizationListsEveryManifest
// checks that it lists all), with its images: applied.
func deployObjects(t *testing.T) map[string]map[string]any {
	t.Helper()
	r := root(t)
	k := readKustomization(t)
	if k.Namespace != "" {
		t.Fatalf("deploy/%s sets namespace: %q; this test does not model it", kustomization, k.Namespace)
	}
	all := map[string]map[string]any{}
	for _, f := range k.Resources {
		data, err := os.ReadFile(filepath.Join(r, "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeMaps("deploy/"+f, data)
		if err != nil {
			t.Fatal(err)
		}
		for key, m := range objs {
			if _, dup := all[key]; dup {
				t.Fatalf("deploy/: %s twice", key)
			}
			kustomizeImages(t, k, m)
			all[key] = m
		}
	}
	return all
}

// diffValues lists where got differs from want, one line per path.
func diffValues(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		var out []string
		for _, k := range slices.Sorted(mapKeys(keys)) {
			wv, win := w[k]
			gv, gin := g[k]
			switch {
			case !gin:
				out = append(out, fmt.Sprintf("%s.%s: only in deploy/: %s", path, k, short(wv)))
			case !win:
				out = append(out, fmt.Sprintf("%s.%s: only in the chart: %s", path, k, short(gv)))
			default:
				out = append(out, diffValues(path+"."+k, wv, gv)...)
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			break
		}
		var out []string
		for i := 0; i < max(len(w), len(g)); i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case i >= len(g):
				out = append(out, fmt.Sprintf("%s: only in deploy/: %s", p, short(w[i])))
			case i >= len(w):
				out = append(out, fmt.Sprintf("%s: only in the chart: %s", p, short(g[i])))
			default:
				out = append(out, diffValues(p, w[i], g[i])...)
			}
		}
		return out
	}
	if reflect.DeepEqual(want, got) {
		return nil
	}
	return []string{fmt.Sprintf("%s: deploy/ has %s, the chart %s", path, short(want), short(got))}
}

func short(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	s := strings.TrimSpace(string(b))
	if strings.Contains(s, "\n") {
		s = "\n    " + strings.ReplaceAll(s, "\n", "\n    ")
	}
	if len(s) > 600 {
		s = s[:600] + " ..."
	}
	return s
}

// compareObjects fails t for every object missing on either side and every
// field that differs.
func compareObjects(t *testing.T, want, got map[string]map[string]any) {
	t.Helper()
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	for _, k := range slices.Sorted(mapKeys(keys)) {
		w, win := want[k]
		g, gin := got[k]
		switch {
		case !gin:
			t.Errorf("%s: in deploy/, not rendered by the chart", k)
		case !win:
			t.Errorf("%s: rendered by the chart, not in deploy/", k)
		default:
			if d := diffValues("", w, g); len(d) > 0 {
				t.Errorf("%s differs (deploy/ vs chart):\n  %s", k, strings.Join(d, "\n  "))
			}
		}
	}
}

// TestHelmChartFilesMatchDeploy: the chart's copies of the rules and
// dashboards (Helm reads only files inside the chart) are deploy/'s.
func TestHelmChartFilesMatchDeploy(t *testing.T) {
	r := root(t)
	pairs := map[string]string{
		"deploy/rules/pullwatch.rules.yaml": chartDir + "/files/pullwatch.rules.yaml",
	}
	dashboards, err := filepath.Glob(filepath.Join(r, "deploy", "grafana", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dashboards) == 0 {
		t.Fatal("no deploy/grafana/*.json")
	}
	for _, d := range dashboards {
		pairs["deploy/grafana/"+filepath.Base(d)] = chartDir + "/files/dashboards/" + filepath.Base(d)
	}
	copies, err := filepath.Glob(filepath.Join(r, chartDir, "files", "dashboards", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range copies {
		if _, err := os.Stat(filepath.Join(r, "deploy", "grafana", filepath.Base(c))); err != nil {
			t.Errorf("%s/files/dashboards/%s has no original in deploy/grafana/: remove it, or add it there", chartDir, filepath.Base(c))
		}
	}
	for _, orig := range slices.Sorted(mapKeys(pairs)) {
		cp := pairs[orig]
		a, err := os.ReadFile(filepath.Join(r, orig))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(r, cp))
		if err != nil {
			t.Errorf("%s: %v (copy %s there)", cp, err, orig)
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: cp %s %s", cp, orig, orig, cp)
		}
	}
}

// TestHelmTemplateMatchesDeploy: the chart's defaults are deploy/.
func TestHelmTemplateMatchesDeploy(t *testing.T) {
	out := helmTemplate(t)
	// Strictly, as deploy/ itself is decoded: a misspelt field fails here.
	if _, err := decodeAll("helm template", out); err != nil {
		t.Fatal(err)
	}
	got, err := decodeMaps("helm template", out)
	if err != nil {
		t.Fatal(err)
	}
	want := deployObjects(t)
	compareObjects(t, want, got)
	if !t.Failed() {
		t.Logf("helm template renders deploy/'s %d objects", len(got))
	}
}

// TestHelmTemplateOptions: the optional parts render what deploy/'s
// components and files say, and the values land where they should.
func TestHelmTemplateOptions(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	out := helmTemplate(t,
		"--set", "networkPolicy.enabled=true",
		"--set", "grafanaDashboards.enabled=true",
		"--set", "serviceMonitor.release=kube-prometheus-stack",
		"--set", "prometheusRule.release=kube-prometheus-stack",
		"--set", "agent.image.registry=registry.example.com",
		"--set", "agent.image.repository=pullwatch/pullwatch-agent",
		"--set", "agent.image.digest="+digest,
		"--set", "aggregator.image.tag=v0.1.0",
		"--set", "agent.priorityClassName=pullwatch-agent",
		"--set", "aggregator.replicas=3",
		"--set", "agent.criSocket.path=/run/k3s/containerd/containerd.sock",
		"--set", "agent.hostPaths.containerdConfig=/var/lib/rancher/k3s/agent/etc/containerd",
	)
	objs, err := decodeAll("helm template (options)", out)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := decodeMaps("helm template (options)", out)
	if err != nil {
		t.Fatal(err)
	}

	// NetworkPolicy: the component's object.
	npFile := filepath.Join(root(t), "deploy", "components", "networkpolicy", "networkpolicy.yaml")
	data, err := os.ReadFile(npFile)
	if err != nil {
		t.Fatal(err)
	}
	wantNP, err := decodeMaps("deploy/components/networkpolicy/networkpolicy.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	gotNP := map[string]map[string]any{}
	for k, m := range maps {
		if m["kind"] == "NetworkPolicy" {
			gotNP[k] = m
		}
	}
	compareObjects(t, wantNP, gotNP)

	var sawDashboards []string
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.DaemonSet:
			spec := v.Spec.Template.Spec
			c := containerNamed(t, &spec, "agent")
			if want := "registry.example.com/pullwatch/pullwatch-agent@" + digest; c.Image != want {
				t.Errorf("agent image %q, want %q", c.Image, want)
			}
			if spec.PriorityClassName != "pullwatch-agent" {
				t.Errorf("agent priorityClassName %q, want pullwatch-agent", spec.PriorityClassName)
			}
			if got := envValue(c, "PULLWATCH_CRI_ENDPOINT"); got != "unix:///run/k3s/containerd/containerd.sock" {
				t.Errorf("PULLWATCH_CRI_ENDPOINT %q", got)
			}
			if got, want := envValue(c, "PULLWATCH_CONTAINERD_CONFIG"), "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"; got != want {
				t.Errorf("PULLWATCH_CONTAINERD_CONFIG %q, want %q", got, want)
			}
			paths := map[string]string{}
			for _, vol := range spec.Volumes {
				if vol.HostPath != nil {
					paths[vol.Name] = vol.HostPath.Path
				}
			}
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
			for name, want := range map[string][2]string{
				criSocketVolume:     {"/run/k3s/containerd/containerd.sock", "/run/k3s/containerd/containerd.sock"},
				"containerd-config": {"/var/lib/rancher/k3s/agent/etc/containerd", "/host/var/lib/rancher/k3s/agent/etc/containerd"},
			} {
				if paths[name] != want[0] || mounts[name] != want[1] {
					t.Errorf("volume %s: hostPath %q mounted at %q, want %q at %q", name, paths[name], mounts[name], want[0], want[1])
				}
			}
		case *appsv1.Deployment:
			c := containerNamed(t, &v.Spec.Template.Spec, "aggregator")
			if want := "ghcr.io/pullwatch/pullwatch-aggregator:v0.1.0"; c.Image != want {
				t.Errorf("aggregator image %q, want %q", c.Image, want)
			}
			if v.Spec.Replicas == nil || *v.Spec.Replicas != 3 {
				t.Errorf("aggregator replicas %v, want 3", v.Spec.Replicas)
			}
		case *corev1.ConfigMap:
			if v.Labels["grafana_dashboard"] != "1" {
				t.Errorf("ConfigMap %s: labels %v, want grafana_dashboard: \"1\"", v.Name, v.Labels)
			}
			for file, content := range v.Data {
				orig, err := os.ReadFile(filepath.Join(root(t), "deploy", "grafana", file))
				if err != nil {
					t.Errorf("ConfigMap %s: %s: %v", v.Name, file, err)
					continue
				}
				if content != strings.TrimRight(string(orig), "\n") {
					t.Errorf("ConfigMap %s: %s is not deploy/grafana/%s", v.Name, file, file)
				}
				sawDashboards = append(sawDashboards, file)
			}
		}
	}
	wantDashboards, _ := filepath.Glob(filepath.Join(root(t), "deploy", "grafana", "*.json"))
	for i := range wantDashboards {
		wantDashboards[i] = filepath.Base(wantDashboards[i])
	}
	sort.Strings(sawDashboards)
	if !slices.Equal(sawDashboards, wantDashboards) {
		t.Errorf("dashboard ConfigMaps hold %v, want every deploy/grafana/*.json: %v", sawDashboards, wantDashboards)
	}
	for k, m := range maps {
		if m["apiVersion"] != "monitoring.coreos.com/v1" {
			continue
		}
		md, _ := m["metadata"].(map[string]any)
		labels, _ := md["labels"].(map[string]any)
		if labels["release"] != "kube-prometheus-stack" {
			t.Errorf("%s: labels %v, want release: kube-prometheus-stack", k, labels)
		}
	}
}

// TestHelmTemplateSchema: values.schema.json refuses what cannot work.
func TestHelmTemplateSchema(t *testing.T) {
	bin := helmBin(t)
	for _, bad := range [][]string{
		{"--set", "agent.image.digest=latest"},
		{"--set", "aggregator.replicas=0"},
		{"--set", "agent.criSocket.path=run/containerd.sock"},
		{"--set", "serviceMonitor.enabeld=true"},
		{"--set", "runtime.profiles={docker}"},
		{"--set", "priorityClass.value=2000000000"},
	} {
		args := append([]string{"template", releaseName, chartDir, "--namespace", namespace}, bad...)
		cmd := exec.Command(bin, args...)
		cmd.Dir = root(t)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("helm template %s: err = %v, want a schema failure\n%s", strings.Join(bad, " "), err, out)
		} else if !strings.Contains(string(out), "schema") {
			t.Errorf("helm template %s fails, but not on the schema:\n%s", strings.Join(bad, " "), out)
		}
	}
}

// TestHelmLint: helm lint --strict passes with the defaults and with every
// optional part on.
func TestHelmLint(t *testing.T) {
	runHelm(t, "lint", "--strict", chartDir, "--namespace", namespace)
	runHelm(t, "lint", "--strict", chartDir, "--namespace", namespace,
		"--set", "networkPolicy.enabled=true", "--set", "grafanaDashboards.enabled=true")
}

// kustomizeWith renders deploy/ with components (directories under
// deploy/components) as an overlay of a user's would: kubectl kustomize
// of a kustomization that names deploy/ and the components by relative
// path (kustomize refuses absolute ones). Skips without kubectl.
func kustomizeWith(t *testing.T, components ...string) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not on PATH; kustomize rendering not checked")
	}
	dir := t.TempDir()
	base, err := filepath.Rel(dir, filepath.Join(root(t), "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n", base)
	for _, c := range components {
		fmt.Fprintf(&b, "  - %s\n", filepath.Join(base, "components", c))
	}
	if err := os.WriteFile(filepath.Join(dir, kustomization), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "kustomize", dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl kustomize with %v: %v\n%s", components, err, ee.Stderr)
		}
		t.Fatalf("kubectl kustomize with %v: %v", components, err)
	}
	return out
}

// TestHelmDedicatedNodesMatchComponent: aggregator.dedicatedNodes=true
// renders what deploy/ with the dedicated-aggregator-nodes component
// applies, object by object, and the component pins the aggregator (and
// only it) to control-plane or set-aside nodes.
func TestHelmDedicatedNodesMatchComponent(t *testing.T) {
	want, err := decodeMaps("kubectl kustomize (dedicated-aggregator-nodes)", kustomizeWith(t, "dedicated-aggregator-nodes"))
	if err != nil {
		t.Fatal(err)
	}
	out := helmTemplate(t, "--set", "aggregator.dedicatedNodes=true")
	got, err := decodeMaps("helm template (dedicatedNodes)", out)
	if err != nil {
		t.Fatal(err)
	}
	compareObjects(t, want, got)

	objs, err := decodeAll("helm template (dedicatedNodes)", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		var spec corev1.PodSpec
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			spec = v.Spec.Template.Spec
		case *appsv1.DaemonSet:
			if v.Spec.Template.Spec.Affinity != nil && v.Spec.Template.Spec.Affinity.NodeAffinity != nil {
				t.Errorf("DaemonSet %s: node affinity %v; the agents must stay on every node", v.Name, v.Spec.Template.Spec.Affinity.NodeAffinity)
			}
			continue
		default:
			continue
		}
		na := spec.Affinity.NodeAffinity
		if na == nil || na.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Fatalf("aggregator: no required node affinity: %+v", spec.Affinity)
		}
		var keys []string
		for _, term := range na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, e := range term.MatchExpressions {
				keys = append(keys, e.Key)
			}
		}
		if want := []string{"node-role.kubernetes.io/control-plane", "pullwatch.io/aggregator"}; !slices.Equal(keys, want) {
			t.Errorf("aggregator: node affinity on %v, want one term each for %v", keys, want)
		}
		if spec.Affinity.PodAntiAffinity == nil {
			t.Error("aggregator: the replicas' anti-affinity is gone")
		}
		var tolerated []string
		for _, tol := range spec.Tolerations {
			tolerated = append(tolerated, tol.Key+":"+string(tol.Effect))
		}
		if want := []string{"node-role.kubernetes.io/control-plane:NoSchedule", "pullwatch.io/aggregator:NoSchedule"}; !slices.Equal(tolerated, want) {
			t.Errorf("aggregator: tolerates %v, want %v", tolerated, want)
		}
	}
}

// TestHelmMetricsAuthOff: metricsAuth.audience "" renders no scrape token
// (no scraper account, Secret or Role), no audience on the aggregator, and a
// ServiceMonitor that sends Prometheus' own token (bearerTokenFile), for a
// Prometheus that can send nothing else.
func TestHelmMetricsAuthOff(t *testing.T) {
	out := helmTemplate(t, "--set", "metricsAuth.audience=")
	maps, err := decodeMaps("helm template (metricsAuth off)", out)
	if err != nil {
		t.Fatal(err)
	}
	for k, m := range maps {
		md, _ := m["metadata"].(map[string]any)
		switch name, _ := md["name"].(string); name {
		case "pullwatch-metrics-scraper", "pullwatch-metrics-token", "pullwatch-aggregator-scrape-token":
			t.Errorf("%s rendered with metricsAuth.audience empty", k)
		}
		if m["kind"] == "ServiceMonitor" {
			spec, _ := m["spec"].(map[string]any)
			eps, _ := spec["endpoints"].([]any)
			ep, _ := eps[0].(map[string]any)
			if ep["bearerTokenFile"] == nil || ep["authorization"] != nil {
				t.Errorf("ServiceMonitor endpoint %v: want bearerTokenFile, no authorization", ep)
			}
		}
	}
	objs, err := decodeAll("helm template (metricsAuth off)", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if d, ok := o.obj.(*appsv1.Deployment); ok {
			c := containerNamed(t, &d.Spec.Template.Spec, "aggregator")
			if v := envValue(c, "PULLWATCH_HTTP_TOKEN_AUDIENCES") + envValue(c, "PULLWATCH_SCRAPE_TOKEN_SECRET"); v != "" {
				t.Errorf("aggregator env with metricsAuth off: %q", v)
			}
		}
	}
}
