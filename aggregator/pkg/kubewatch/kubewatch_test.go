package kubewatch

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metafake "k8s.io/client-go/metadata/fake"
)

func meta(apiVersion, kind, namespace, name string, labels map[string]string, owner *metav1.OwnerReference) *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: apiVersion, Kind: kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels, Annotations: map[string]string{"big": "annotation"}},
	}
	if owner != nil {
		m.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return m
}

func controller(apiVersion, kind, name string) *metav1.OwnerReference {
	yes := true
	return &metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: types.UID("uid-" + name), Controller: &yes}
}

func pod(namespace, name string, owner *metav1.OwnerReference, containers ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	for i := 0; i+1 < len(containers); i += 2 {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: containers[i], Image: containers[i+1], Command: []string{"x"}})
	}
	return p
}

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := metafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// started returns a synced Watcher over fake clients holding objs.
func started(t *testing.T, opts Options, pods []runtime.Object, metas ...runtime.Object) (*Watcher, *metafake.FakeMetadataClient) {
	t.Helper()
	metaClient := metafake.NewSimpleMetadataClient(testScheme(t), metas...)
	w := NewForClients(kubefake.NewClientset(pods...), metaClient, slog.New(slog.NewTextHandler(io.Discard, nil)), opts)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	waitUntil(t, "caches synced", func() bool {
		_, _, synced := w.Node("x")
		return synced && (!opts.Owners || w.OwnersSynced())
	})
	return w, metaClient
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func kubeNode(name string, labels map[string]string, ready corev1.ConditionStatus) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: map[string]string{"big": "x"}}}
	if ready != "" {
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse}, {Type: corev1.NodeReady, Status: ready}}
	}
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"big"}}}
	return n
}

func TestNodes(t *testing.T) {
	var mu sync.Mutex
	var deleted []string
	kube := kubefake.NewClientset(
		kubeNode("node-a", map[string]string{ZoneLabel: "zone-1", "other": "x"}, corev1.ConditionTrue),
		kubeNode("node-b", nil, corev1.ConditionFalse),
		kubeNode("win-1", map[string]string{corev1.LabelOSStable: "windows"}, corev1.ConditionTrue),
	)
	w := NewForClients(kube, metafake.NewSimpleMetadataClient(testScheme(t)), slog.New(slog.NewTextHandler(io.Discard, nil)), Options{OnNodeDeleted: func(name string) {
		mu.Lock()
		defer mu.Unlock()
		deleted = append(deleted, name)
	}})
	if _, synced := w.Nodes(); synced {
		t.Error("Nodes says synced before Start")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.Start(ctx)
	waitUntil(t, "nodes synced", func() bool { _, _, synced := w.Node("x"); return synced })
	tests := []struct {
		node   string
		zone   string
		exists bool
	}{
		{"node-a", "zone-1", true},
		{"node-b", "", true},
		{"node-c", "", false},
	}
	for _, tt := range tests {
		zone, exists, synced := w.Node(tt.node)
		if zone != tt.zone || exists != tt.exists || !synced {
			t.Errorf("Node(%s) = %q, %v, %v; want %q, %v, true", tt.node, zone, exists, synced, tt.zone, tt.exists)
		}
	}
	facts, synced := w.Nodes()
	slices.SortFunc(facts, func(a, b NodeFacts) int { return strings.Compare(a.Name, b.Name) })
	want := []NodeFacts{{Name: "node-a", Zone: "zone-1", Ready: true}, {Name: "node-b"}, {Name: "win-1", Ready: true, Windows: true}}
	if !synced || !slices.Equal(facts, want) {
		t.Errorf("Nodes() = %+v, %v; want %+v, true", facts, synced, want)
	}
	obj, _, _ := w.nodes.GetIndexer().GetByKey("node-a")
	if n := obj.(*corev1.Node); len(n.Status.Images) != 0 || len(n.Annotations) != 0 || len(n.Labels) != 1 || len(n.Status.Conditions) != 1 {
		t.Errorf("the cache keeps more of node-a than its zone and Ready condition: %+v", n)
	}

	if err := kube.CoreV1().Nodes().Delete(context.Background(), "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "node-b deleted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(deleted) == 1 && deleted[0] == "node-b"
	})
	if _, exists, _ := w.Node("node-b"); exists {
		t.Error("node-b still exists after its deletion")
	}
}

func TestNotSynced(t *testing.T) {
	w := NewForClients(kubefake.NewClientset(), metafake.NewSimpleMetadataClient(testScheme(t)), slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Owners: true})
	// Not started.
	if _, _, synced := w.Node("a"); synced {
		t.Error("Node says synced before Start")
	}
	if w.OwnersSynced() {
		t.Error("OwnersSynced before Start")
	}
}

func TestWorkload(t *testing.T) {
	pods := []runtime.Object{
		pod("shop", "web-7d9f-abcde", controller("apps/v1", "ReplicaSet", "web-7d9f"), "app", "nginx:1.27", "sidecar", "envoy:1"),
		pod("shop", "lonely-rs-xyz", controller("apps/v1", "ReplicaSet", "lonely-rs")),
		pod("shop", "gone-rs-xyz", controller("apps/v1", "ReplicaSet", "gone-rs")),
		pod("shop", "db-0", controller("apps/v1", "StatefulSet", "db")),
		pod("kube-system", "agent-x1", controller("apps/v1", "DaemonSet", "agent")),
		pod("batch", "report-28000-q", controller("batch/v1", "Job", "report-28000")),
		pod("batch", "once-q", controller("batch/v1", "Job", "once")),
		pod("shop", "bare", nil),
		pod("argo", "roll-abc-1", controller("apps/v1", "ReplicaSet", "roll-abc")),
		pod("kube-system", "etcd-node-a", controller("v1", "Node", "node-a")),
	}
	metas := []runtime.Object{
		meta("apps/v1", "ReplicaSet", "shop", "web-7d9f", nil, controller("apps/v1", "Deployment", "web")),
		meta("apps/v1", "ReplicaSet", "shop", "lonely-rs", nil, nil),
		meta("apps/v1", "ReplicaSet", "argo", "roll-abc", nil, controller("argoproj.io/v1alpha1", "Rollout", "roll")),
		meta("batch/v1", "Job", "batch", "report-28000", nil, controller("batch/v1", "CronJob", "report")),
		meta("batch/v1", "Job", "batch", "once", nil, nil),
	}
	w, _ := started(t, Options{Owners: true}, pods, metas...)
	tests := []struct {
		namespace, pod string
		kind, name     string
	}{
		{"shop", "web-7d9f-abcde", "deployment", "web"},
		{"shop", "lonely-rs-xyz", "replicaset", "lonely-rs"},
		{"shop", "gone-rs-xyz", "replicaset", "gone-rs"},
		{"shop", "db-0", "statefulset", "db"},
		{"kube-system", "agent-x1", "daemonset", "agent"},
		{"batch", "report-28000-q", "cronjob", "report"},
		{"batch", "once-q", "job", "once"},
		{"shop", "bare", "pod", "bare"},
		{"shop", "not-in-api", "pod", "not-in-api"},
		{"argo", "roll-abc-1", "rollout", "roll"},
		{"kube-system", "etcd-node-a", "node", "node-a"},
	}
	for _, tt := range tests {
		kind, name := w.Workload(tt.namespace, tt.pod)
		if kind != tt.kind || name != tt.name {
			t.Errorf("Workload(%s/%s) = %s/%s, want %s/%s", tt.namespace, tt.pod, kind, name, tt.kind, tt.name)
		}
	}

	images := []struct{ namespace, pod, container, want string }{
		{"shop", "web-7d9f-abcde", "app", "nginx:1.27"},
		{"shop", "web-7d9f-abcde", "sidecar", "envoy:1"},
		{"shop", "web-7d9f-abcde", "nope", ""},
		{"shop", "not-in-api", "app", ""},
	}
	for _, tt := range images {
		if got := w.ContainerImage(tt.namespace, tt.pod, tt.container); got != tt.want {
			t.Errorf("ContainerImage(%s/%s, %s) = %q, want %q", tt.namespace, tt.pod, tt.container, got, tt.want)
		}
	}
}

func TestWithoutOwners(t *testing.T) {
	w, _ := started(t, Options{}, []runtime.Object{pod("shop", "web-1", controller("apps/v1", "DaemonSet", "web"), "app", "nginx")})
	if kind, name := w.Workload("shop", "web-1"); kind != "pod" || name != "web-1" {
		t.Errorf("Workload without owner informers = %s/%s, want pod/web-1", kind, name)
	}
	if w.OwnersSynced() {
		t.Error("OwnersSynced without owner informers")
	}
}

func TestStrip(t *testing.T) {
	m, _ := stripMetadata(meta("v1", "Node", "", "n", map[string]string{ZoneLabel: "z", "big": "x"}, controller("v1", "X", "y")))
	pm := m.(*metav1.PartialObjectMetadata)
	if len(pm.Annotations) != 0 || len(pm.Labels) != 1 || pm.Labels[ZoneLabel] != "z" || len(pm.OwnerReferences) != 1 {
		t.Errorf("stripped metadata = %+v", pm.ObjectMeta)
	}
	p, _ := stripPod(pod("ns", "p", nil, "app", "img:1"))
	sp := p.(*corev1.Pod)
	if len(sp.Spec.Containers) != 1 || sp.Spec.Containers[0].Image != "img:1" || sp.Spec.Containers[0].Command != nil {
		t.Errorf("stripped pod = %+v", sp.Spec)
	}
}

// TestPods: the pods bound to a node that can still start a container,
// with their workload, init containers first, pull policies kept.
func TestPods(t *testing.T) {
	web := pod("shop", "web-1", controller("apps/v1", "DaemonSet", "agentish"), "app", "registry.example/app:1")
	web.Spec.NodeName = "node-a"
	web.Spec.Containers[0].ImagePullPolicy = corev1.PullAlways
	web.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "registry.example/init:1", ImagePullPolicy: corev1.PullIfNotPresent}}
	unbound := pod("shop", "pending", nil, "app", "registry.example/app:1")
	done := pod("shop", "done", nil, "app", "registry.example/app:1")
	done.Spec.NodeName, done.Status.Phase = "node-a", corev1.PodSucceeded
	w, _ := started(t, Options{Owners: true}, []runtime.Object{web, unbound, done},
		meta("v1", "Namespace", "", "shop", map[string]string{"team": "a"}, nil))
	got := w.Pods()
	if len(got) != 1 {
		t.Fatalf("Pods() = %+v, want web-1 only (not unbound, not succeeded)", got)
	}
	p := got[0]
	if p.Node != "node-a" || p.Kind != "daemonset" || p.Workload != "agentish" || len(p.Containers) != 2 {
		t.Fatalf("Pods()[0] = %+v", p)
	}
	if c := p.Containers[0]; c.Name != "init" || !c.Init || c.PullPolicy != corev1.PullIfNotPresent {
		t.Errorf("init container %+v", c)
	}
	if c := p.Containers[1]; c.Name != "app" || c.Init || c.PullPolicy != corev1.PullAlways || c.Image != "registry.example/app:1" {
		t.Errorf("container %+v", c)
	}
}

func TestNamespaceLabels(t *testing.T) {
	w, _ := started(t, Options{Namespaces: true}, nil, meta("v1", "Namespace", "", "shop", map[string]string{"team": "a"}, nil))
	waitUntil(t, "namespaces synced", w.NamespacesSynced)
	if l, ok := w.NamespaceLabels("shop"); !ok || l["team"] != "a" {
		t.Errorf("NamespaceLabels(shop) = %v, %v", l, ok)
	}
	if _, ok := w.NamespaceLabels("other"); ok {
		t.Error("unknown namespace reported known")
	}
}

func TestPodOn(t *testing.T) {
	web := pod("shop", "web-1", nil, "app", "registry.example/app:1")
	web.Spec.NodeName, web.UID = "node-a", "uid-1"
	w, _ := started(t, Options{Owners: true}, []runtime.Object{web},
		meta("v1", "Namespace", "", "shop", nil, nil))
	for _, tc := range []struct {
		ns, pod, uid, node string
		want               bool
	}{
		{"shop", "web-1", "uid-1", "node-a", true},
		{"shop", "web-1", "uid-1", "node-b", false},
		{"shop", "web-1", "uid-0", "node-a", false},
		{"shop", "web-1", "", "node-a", false},
		{"shop", "web-2", "uid-1", "node-a", false},
		{"bank", "web-1", "uid-1", "node-a", false},
	} {
		if got := w.PodOn(tc.ns, tc.pod, tc.uid, tc.node); got != tc.want {
			t.Errorf("PodOn(%s, %s, %s, %s) = %v, want %v", tc.ns, tc.pod, tc.uid, tc.node, got, tc.want)
		}
	}
}
