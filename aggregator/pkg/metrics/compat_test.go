package metrics

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"

	"github.com/pullwatch/pullwatch/aggregator/pkg/state"
)

// fakeOwners maps "namespace/pod" to "kind/name" and container images.
type fakeOwners struct {
	synced    bool
	workloads map[string][2]string
	images    map[string]string // "namespace/pod/container" -> image
}

func (o fakeOwners) OwnersSynced() bool { return o.synced }

func (o fakeOwners) Workload(namespace, pod string) (string, string) {
	if w, ok := o.workloads[namespace+"/"+pod]; ok {
		return w[0], w[1]
	}
	return "pod", pod
}

func (o fakeOwners) ContainerImage(namespace, pod, container string) string {
	return o.images[namespace+"/"+pod+"/"+container]
}

func containers(refs ...string) []*pullwatchv1.ContainerRef {
	var out []*pullwatchv1.ContainerRef
	for _, r := range refs {
		p := strings.Split(r, "/") // namespace/pod/container
		out = append(out, &pullwatchv1.ContainerRef{Namespace: p[0], Pod: p[1], Container: p[2]})
	}
	return out
}

// compatStore: web runs on node-1 (available) and node-2 (unreachable)
// as pods of one Deployment; job runs on node-3, which is stale and
// would say absent; node-1 also has a container without pod labels and a
// bare pod whose image the registry refuses.
func compatStore() *state.Store {
	now := t0
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return now }))
	img := func(ref string, st pullwatchv1.ImageStatus, cs []*pullwatchv1.ContainerRef) *pullwatchv1.ImageReport {
		return &pullwatchv1.ImageReport{Image: ref, Registry: "registry.example", Status: st, InUse: len(cs) > 0, Containers: cs,
			Endpoints: []*pullwatchv1.EndpointResult{endpoint("https://registry.example", upstream, st, 0, 0)}}
	}
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "node-3"}, Images: []*pullwatchv1.ImageReport{
		img("registry.example/job:1", absent, containers("batch/report-1-x/main")),
	}})
	now = now.Add(4 * time.Minute)
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "node-1"}, Images: []*pullwatchv1.ImageReport{
		img("registry.example/web:1", available, containers("shop/web-a-1/app")),
		img("registry.example/other:1", available, []*pullwatchv1.ContainerRef{{ContainerId: "no-pod-labels"}}),
		img("registry.example/bare:1", pullwatchv1.ImageStatus_IMAGE_STATUS_FORBIDDEN, containers("shop/bare/main")),
		img("registry.example/job:1", available, nil),
	}})
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "node-2"}, Images: []*pullwatchv1.ImageReport{
		img("registry.example/web:1", unreachable, containers("shop/web-a-2/app")),
	}})
	return s
}

// compatLines renders the expected exposition of the 7 families for
// containers given as "labels status".
func compatLines(t *testing.T, entries ...[2]string) string {
	t.Helper()
	var b strings.Builder
	for _, name := range compatNames {
		fmt.Fprintf(&b, "# HELP k8s_image_availability_exporter_%s %s\n# TYPE k8s_image_availability_exporter_%[1]s gauge\n", name, compatHelp(name))
		for _, e := range entries {
			v := 0
			if e[1] == name {
				v = 1
			}
			fmt.Fprintf(&b, "k8s_image_availability_exporter_%s{%s} %d\n", name, e[0], v)
		}
	}
	return b.String()
}

func compatFamilies() []string {
	out := make([]string, len(compatNames))
	for i, n := range compatNames {
		out[i] = "k8s_image_availability_exporter_" + n
	}
	return out
}

func TestCompat(t *testing.T) {
	owners := fakeOwners{synced: true,
		workloads: map[string][2]string{"shop/web-a-1": {"deployment", "web"}, "shop/web-a-2": {"deployment", "web"}},
		images:    map[string]string{"shop/web-a-1/app": "registry.example/web:1", "shop/web-a-2/app": "registry.example/web:1"},
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"without the API: one container per pod, normalized image", Config{CompatSchema: CompatCurrent}, compatLines(t,
			[2]string{`container="app",image="registry.example/web:1",kind="pod",name="web-a-1",namespace="shop"`, "available"},
			[2]string{`container="app",image="registry.example/web:1",kind="pod",name="web-a-2",namespace="shop"`, "registry_unavailable"},
			[2]string{`container="main",image="registry.example/bare:1",kind="pod",name="bare",namespace="shop"`, "authorization_failure"},
		)},
		{"with owners: the worst across the Deployment's nodes", Config{CompatSchema: CompatCurrent, Owners: owners}, compatLines(t,
			[2]string{`container="app",image="registry.example/web:1",kind="deployment",name="web",namespace="shop"`, "registry_unavailable"},
			[2]string{`container="main",image="registry.example/bare:1",kind="pod",name="bare",namespace="shop"`, "authorization_failure"},
		)},
		{"owners not loaded yet: nothing rather than kind=pod series that vanish", Config{CompatSchema: CompatCurrent, Owners: fakeOwners{}}, ""},
		{"--compat-metrics=false", Config{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(compatStore(), tt.cfg)
			if err := testutil.CollectAndCompare(c, strings.NewReader(tt.want), compatFamilies()...); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestCompatStatusMapping(t *testing.T) {
	want := map[pullwatchv1.ImageStatus]string{
		available: "available",
		absent:    "absent",
		pullwatchv1.ImageStatus_IMAGE_STATUS_BAD_IMAGE_FORMAT: "bad_image_format",
		pullwatchv1.ImageStatus_IMAGE_STATUS_PLATFORM_MISSING: "bad_image_format",
		unreachable: "registry_unavailable",
		pullwatchv1.ImageStatus_IMAGE_STATUS_UNAUTHORIZED: "authentication_failure",
		pullwatchv1.ImageStatus_IMAGE_STATUS_FORBIDDEN:    "authorization_failure",
		rateLimited: "unknown_error",
		pullwatchv1.ImageStatus_IMAGE_STATUS_UNKNOWN: "unknown_error",
	}
	for _, st := range pullwatchv1.Statuses() {
		if got := compatNames[st.CompatFamily()]; got != want[st] {
			t.Errorf("%s maps to %s, want %s", st.Word(), got, want[st])
		}
	}
}

func TestNodeImageSeriesFailing(t *testing.T) {
	c := newCollector(testStore(), Config{NodeImageSeries: NodeImageSeriesFailing})
	want := fmt.Sprintf(`
# HELP pullwatch_node_image_status %s
# TYPE pullwatch_node_image_status gauge
pullwatch_node_image_status{image="docker.io/library/b:1",node="node-a",status="absent"} 1
pullwatch_node_image_status{image="quay.io/org/c:1",node="node-b",status="rate_limited"} 1
# HELP pullwatch_node_image_in_use %s
# TYPE pullwatch_node_image_in_use gauge
pullwatch_node_image_in_use{image="docker.io/library/b:1",node="node-a"} 0
pullwatch_node_image_in_use{image="quay.io/org/c:1",node="node-b"} 0
# HELP pullwatch_image_nodes %s
# TYPE pullwatch_image_nodes gauge
pullwatch_image_nodes{image="docker.io/library/a:1",status="available"} 1
pullwatch_image_nodes{image="docker.io/library/b:1",status="absent"} 1
`, helpOf(t, "pullwatch_node_image_status"), helpOf(t, "pullwatch_node_image_in_use"), helpOf(t, "pullwatch_image_nodes"))
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "pullwatch_node_image_status", "pullwatch_node_image_in_use", "pullwatch_image_nodes"); err != nil {
		t.Error(err)
	}
}

func TestCompatLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(newCollector(compatStore(), Config{CompatSchema: CompatCurrent}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestCompatLegacy: --compat-metrics=legacy exports the per-kind families
// of k8s-image-availability-exporter before v0.7, with a label named after
// the kind, for the kinds it had; both exports both schemas.
func TestCompatLegacy(t *testing.T) {
	owners := fakeOwners{synced: true,
		workloads: map[string][2]string{"shop/web-a-1": {"deployment", "web"}, "shop/web-a-2": {"deployment", "web"}},
		images:    map[string]string{"shop/web-a-1/app": "registry.example/web:1", "shop/web-a-2/app": "registry.example/web:1"},
	}
	var legacy []string
	var want strings.Builder
	for _, name := range compatNames {
		family := "k8s_image_availability_exporter_deployment_" + name
		legacy = append(legacy, family)
		value := 0
		if name == "registry_unavailable" {
			value = 1
		}
		fmt.Fprintf(&want, "# HELP %s %s\n# TYPE %s gauge\n%s{container=\"app\",deployment=\"web\",image=\"registry.example/web:1\",namespace=\"shop\"} %d\n",
			family, legacyHelp("deployment", name), family, family, value)
	}
	for _, schema := range []string{CompatLegacy, CompatBoth} {
		c := newCollector(compatStore(), Config{CompatSchema: schema, Owners: owners})
		if err := testutil.CollectAndCompare(c, strings.NewReader(want.String()), legacy...); err != nil {
			t.Errorf("%s: %v", schema, err)
		}
		n := testutil.CollectAndCount(c, compatFamilies()...)
		if want := map[string]int{CompatLegacy: 0, CompatBoth: 14}[schema]; n != want {
			t.Errorf("%s: %d current-schema series, want %d", schema, n, want)
		}
	}
}

// placedOwners is fakeOwners that also knows where the API has pods:
// "namespace/pod" -> node and uid.
type placedOwners struct {
	fakeOwners
	pods map[string][2]string
}

func (o placedOwners) PodOn(namespace, pod, uid, node string) bool {
	p, ok := o.pods[namespace+"/"+pod]
	return ok && p[0] == node && p[1] == uid
}

// With the API, a node's containers make compatibility series only for
// pods the API has bound to that node with the UID it reports: a node
// cannot mint series for workloads that are not on it.
func TestCompatOnlyForPodsOnTheNode(t *testing.T) {
	s := state.New(3*time.Minute, state.WithClock(func() time.Time { return t0 }))
	ref := func(ns, pod, uid, c string) *pullwatchv1.ContainerRef {
		return &pullwatchv1.ContainerRef{Namespace: ns, Pod: pod, PodUid: uid, Container: c}
	}
	s.ApplySnapshot(&pullwatchv1.NodeSnapshot{Node: &pullwatchv1.Node{Name: "node-1"}, Images: []*pullwatchv1.ImageReport{{
		Image: "registry.example/web:1", Registry: "registry.example", Status: absent, InUse: true,
		Containers: []*pullwatchv1.ContainerRef{
			ref("shop", "web-a-1", "u1", "app"),    // its own pod
			ref("shop", "web-a-2", "u2", "app"),    // a pod on node-2
			ref("shop", "web-a-3", "old", "app"),   // a pod on node-1, another UID
			ref("shop", "ghost", "u9", "app"),      // no such pod
			ref("bank", "ledger-1", "u5", "vault"), // a pod on node-2, another namespace
		},
		Endpoints: []*pullwatchv1.EndpointResult{endpoint("https://registry.example", upstream, absent, 0, 0)},
	}}})
	owners := placedOwners{fakeOwners: fakeOwners{synced: true}, pods: map[string][2]string{
		"shop/web-a-1": {"node-1", "u1"}, "shop/web-a-2": {"node-2", "u2"}, "shop/web-a-3": {"node-1", "u3"}, "bank/ledger-1": {"node-2", "u5"},
	}}
	want := compatLines(t, [2]string{`container="app",image="registry.example/web:1",kind="pod",name="web-a-1",namespace="shop"`, "absent"})
	if err := testutil.CollectAndCompare(newCollector(s, Config{CompatSchema: CompatCurrent, Owners: owners}), strings.NewReader(want), compatFamilies()...); err != nil {
		t.Error(err)
	}
}
