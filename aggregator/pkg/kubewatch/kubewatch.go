// Package kubewatch is what the aggregator reads from the Kubernetes API,
// through client-go informers: Nodes (which exist, and their zone),
// and, for the compatibility metrics, Pods, ReplicaSets and Jobs (which
// workload runs a container: Pod → ReplicaSet → Deployment, Pod → Job →
// CronJob, Pod → DaemonSet/StatefulSet/...).
//
// It watches only metadata where that is enough (Nodes, ReplicaSets,
// Jobs, and Namespaces with their labels for --namespace-label) and keeps
// a stripped copy of Pods (names, owners, node, phase, container images
// and pull policies: what the risk assessment needs), so its memory stays
// small in large clusters. The RBAC it needs is list/watch on nodes and
// pods, on replicasets (apps) and jobs (batch) when owners are watched,
// and on namespaces only with Options.Namespaces.
package kubewatch

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// ZoneLabel is the Node label the zone comes from.
const ZoneLabel = corev1.LabelTopologyZone

var (
	replicaSetsResource = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}
	jobsResource        = schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}
	namespacesResource  = corev1.SchemeGroupVersion.WithResource("namespaces")
)

// Options configure a Watcher.
type Options struct {
	// Owners turns on the Pod, ReplicaSet and Job informers that
	// Workload and ContainerImage need.
	Owners bool
	// OnNodeDeleted is called with the name of each Node the API deletes.
	OnNodeDeleted func(name string)
	// Namespaces turns on a Namespace (metadata) informer for
	// NamespaceLabels: the --namespace-label filter.
	Namespaces bool
}

// Watcher answers questions about nodes and workloads from informer
// caches. Its methods are safe for concurrent use.
type Watcher struct {
	log  *slog.Logger
	opts Options

	metaFactory metadatainformer.SharedInformerFactory
	podFactory  informers.SharedInformerFactory
	// nodeFactory holds Nodes typed (their Ready condition is status,
	// which metadata informers do not carry), stripped by stripNode.
	nodeFactory informers.SharedInformerFactory

	nodes       cache.SharedIndexInformer
	pods        cache.SharedIndexInformer // nil without Owners
	replicaSets cache.SharedIndexInformer
	jobs        cache.SharedIndexInformer
	// namespaces keep their labels (a factory of their own, since the
	// other metadata caches drop labels); nil without Options.Namespaces.
	nsFactory  metadatainformer.SharedInformerFactory
	namespaces cache.SharedIndexInformer

	nodesSynced, ownersSynced, namespacesSynced atomic.Bool
}

// New returns a Watcher for the API at cfg. Start starts it.
func New(cfg *rest.Config, log *slog.Logger, opts Options) (*Watcher, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "pullwatch-aggregator"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata client for %s: %w", cfg.Host, err)
	}
	return NewForClients(kube, meta, log, opts), nil
}

// NewForClients returns a Watcher using the given clients (fakes in tests).
func NewForClients(kube kubernetes.Interface, meta metadata.Interface, log *slog.Logger, opts Options) *Watcher {
	w := &Watcher{log: log, opts: opts}
	// No periodic resync: nothing here reconciles, the caches only answer.
	w.metaFactory = metadatainformer.NewSharedInformerFactoryWithOptions(meta, 0, metadatainformer.WithTransform(stripMetadata))
	w.nodeFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(stripNode))
	w.nodes = w.nodeFactory.Core().V1().Nodes().Informer()
	if _, err := w.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: w.nodeDeleted}); err != nil {
		// Only possible once the informer has stopped.
		log.Error("node informer refused its handler", logging.ErrKey, err)
	}
	if opts.Namespaces {
		w.nsFactory = metadatainformer.NewSharedInformerFactoryWithOptions(meta, 0, metadatainformer.WithTransform(stripNamespace))
		w.namespaces = w.nsFactory.ForResource(namespacesResource).Informer()
	}
	if opts.Owners {
		w.replicaSets = w.metaFactory.ForResource(replicaSetsResource).Informer()
		w.jobs = w.metaFactory.ForResource(jobsResource).Informer()
		w.podFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(stripPod))
		w.pods = w.podFactory.Core().V1().Pods().Informer()
	}
	return w
}

// PodInformer is the pod informer (nil without Options.Owners), for
// credential lending to share rather than list and watch every pod again.
func (w *Watcher) PodInformer() cache.SharedIndexInformer { return w.pods }

// Start starts the informers and returns at once; the caches load in the
// background. Until the node list is loaded, Node answers synced=false;
// until the pods and their owners are loaded, OwnersSynced is false. Both
// are logged when they happen. Start stops everything when ctx ends.
func (w *Watcher) Start(ctx context.Context) {
	w.metaFactory.Start(ctx.Done())
	w.nodeFactory.Start(ctx.Done())
	if w.podFactory != nil {
		w.podFactory.Start(ctx.Done())
	}
	if w.nsFactory != nil {
		w.nsFactory.Start(ctx.Done())
		go w.waitSynced(ctx, "namespaces", &w.namespacesSynced, w.namespaces.HasSynced)
	}
	go w.waitSynced(ctx, "nodes", &w.nodesSynced, w.nodes.HasSynced)
	if w.opts.Owners {
		go w.waitSynced(ctx, "pods, replicasets and jobs", &w.ownersSynced, w.pods.HasSynced, w.replicaSets.HasSynced, w.jobs.HasSynced)
	}
}

// syncWarnAfter is how long a cache may take to load before the
// aggregator warns (typically missing RBAC, or an unreachable API).
const syncWarnAfter = 30 * time.Second

func (w *Watcher) waitSynced(ctx context.Context, what string, flag *atomic.Bool, synced ...cache.InformerSynced) {
	start := time.Now()
	warn := time.AfterFunc(syncWarnAfter, func() {
		w.log.WarnContext(ctx, "Kubernetes API: "+what+" not loaded yet; check the aggregator's RBAC and the API server", "waited", syncWarnAfter.String())
	})
	defer warn.Stop()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	flag.Store(true)
	w.log.InfoContext(ctx, "Kubernetes API: "+what+" loaded", "took", time.Since(start).Round(time.Millisecond).String())
}

func (w *Watcher) nodeDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	w.log.Info("node deleted from the cluster; dropping its results", "node", m.GetName())
	if w.opts.OnNodeDeleted != nil {
		w.opts.OnNodeDeleted(m.GetName())
	}
}

// Node implements analyzer.Directory: the node's zone label, whether the
// API has the node, and whether the node list has been loaded.
func (w *Watcher) Node(name string) (zone string, exists, synced bool) {
	if !w.nodesSynced.Load() {
		return "", false, false
	}
	obj, exists, err := w.nodes.GetIndexer().GetByKey(name)
	if err != nil || !exists {
		return "", false, true
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return "", true, true
	}
	return m.GetLabels()[ZoneLabel], true, true
}

// NodeFacts is what the aggregator needs of a Node to know whether an
// agent should report from it.
type NodeFacts struct {
	// Name and Zone (topology.kubernetes.io/zone, empty if none).
	Name, Zone string
	// Created is the Node's creation time.
	Created time.Time
	// Ready is the Node's Ready condition.
	Ready bool
	// Windows: labelled kubernetes.io/os=windows, where no agent runs.
	Windows bool
}

// Nodes returns every Node of the API (unordered), and false until the
// node list has been loaded.
func (w *Watcher) Nodes() ([]NodeFacts, bool) {
	if !w.nodesSynced.Load() {
		return nil, false
	}
	objs := w.nodes.GetStore().List()
	out := make([]NodeFacts, 0, len(objs))
	for _, obj := range objs {
		n, ok := obj.(*corev1.Node)
		if !ok {
			continue
		}
		f := NodeFacts{Name: n.Name, Zone: n.Labels[ZoneLabel], Created: n.CreationTimestamp.Time, Windows: n.Labels[corev1.LabelOSStable] == "windows"}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				f.Ready = c.Status == corev1.ConditionTrue
			}
		}
		out = append(out, f)
	}
	return out, true
}

// stripNode keeps a Node's name, its zone and OS labels and its Ready
// condition: images, addresses, annotations and managed fields are most
// of a Node, and 5,000 of them are held.
func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown: keep as is
	}
	out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, CreationTimestamp: n.CreationTimestamp}}
	for _, k := range []string{ZoneLabel, corev1.LabelOSStable} {
		if v, ok := n.Labels[k]; ok {
			if out.Labels == nil {
				out.Labels = map[string]string{}
			}
			out.Labels[k] = v
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			out.Status.Conditions = []corev1.NodeCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return out, nil
}

// PodContainer is one container of a pod as its spec writes it.
type PodContainer struct {
	Name       string
	Image      string
	PullPolicy corev1.PullPolicy
	Init       bool
}

// PodFacts is what the risk assessment needs of a pod bound to a node.
type PodFacts struct {
	Namespace, Name, Node string
	// Kind (lowercase) and Workload name, as Workload answers.
	Kind, Workload string
	Containers     []PodContainer
}

// Pods returns every pod bound to a node that can still (re)start a
// container (phase neither Succeeded nor Failed). Ephemeral containers
// are left out: they are never restarted. Empty without Options.Owners.
func (w *Watcher) Pods() []PodFacts {
	if w.pods == nil {
		return nil
	}
	objs := w.pods.GetIndexer().List()
	out := make([]PodFacts, 0, len(objs))
	for _, obj := range objs {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		f := PodFacts{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName}
		f.Kind, f.Workload = w.Workload(p.Namespace, p.Name)
		for _, c := range p.Spec.InitContainers {
			f.Containers = append(f.Containers, PodContainer{Name: c.Name, Image: c.Image, PullPolicy: c.ImagePullPolicy, Init: true})
		}
		for _, c := range p.Spec.Containers {
			f.Containers = append(f.Containers, PodContainer{Name: c.Name, Image: c.Image, PullPolicy: c.ImagePullPolicy})
		}
		out = append(out, f)
	}
	return out
}

// NamespaceLabels returns the labels of a namespace and whether the
// namespace is known. Always unknown without Options.Namespaces.
func (w *Watcher) NamespaceLabels(name string) (map[string]string, bool) {
	if w.namespaces == nil {
		return nil, false
	}
	obj, ok, _ := w.namespaces.GetIndexer().GetByKey(name)
	if !ok {
		return nil, false
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, false
	}
	return m.GetLabels(), true
}

// OwnersSynced reports whether pods, replicasets and jobs are loaded, so
// that Workload's answers are final. Always false without Options.Owners.
func (w *Watcher) OwnersSynced() bool { return w.ownersSynced.Load() }

// Workload returns the kind (lowercase: deployment, statefulset,
// daemonset, cronjob, job, replicaset, pod, or any other controller's
// kind) and name of the workload that runs the pod. A pod without a
// controller, or one the API does not know, is its own workload (kind
// pod). A ReplicaSet or Job not in the cache stands for itself.
func (w *Watcher) Workload(namespace, pod string) (kind, name string) {
	if w.pods == nil {
		return "pod", pod
	}
	obj, ok, _ := w.pods.GetIndexer().GetByKey(namespace + "/" + pod)
	if !ok {
		return "pod", pod
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return "pod", pod
	}
	c := metav1.GetControllerOfNoCopy(p)
	if c == nil {
		return "pod", pod
	}
	switch {
	case c.Kind == "ReplicaSet" && groupOf(c.APIVersion) == "apps":
		return w.ownerOf(w.replicaSets, namespace, c)
	case c.Kind == "Job" && groupOf(c.APIVersion) == "batch":
		return w.ownerOf(w.jobs, namespace, c)
	}
	return strings.ToLower(c.Kind), c.Name
}

// ownerOf returns the controller of the ReplicaSet or Job c names, or c
// itself when it has none or is not cached.
func (w *Watcher) ownerOf(inf cache.SharedIndexInformer, namespace string, c *metav1.OwnerReference) (string, string) {
	if obj, ok, _ := inf.GetIndexer().GetByKey(namespace + "/" + c.Name); ok {
		if m, ok := obj.(metav1.Object); ok {
			if top := metav1.GetControllerOfNoCopy(m); top != nil {
				return strings.ToLower(top.Kind), top.Name
			}
		}
	}
	return strings.ToLower(c.Kind), c.Name
}

// PodOn reports whether the API has the pod bound to node with uid
// (metrics.Placement): what a node's agent says runs on it counts only
// for pods that do.
func (w *Watcher) PodOn(namespace, pod, uid, node string) bool {
	if w.pods == nil || uid == "" {
		return false
	}
	obj, ok, _ := w.pods.GetIndexer().GetByKey(namespace + "/" + pod)
	if !ok {
		return false
	}
	p, ok := obj.(*corev1.Pod)
	return ok && p.Spec.NodeName == node && string(p.UID) == uid
}

// ContainerImage returns the image of the named container as the pod
// spec writes it (init and ephemeral containers included), or "" when
// the pod or container is unknown.
func (w *Watcher) ContainerImage(namespace, pod, container string) string {
	if w.pods == nil {
		return ""
	}
	obj, ok, _ := w.pods.GetIndexer().GetByKey(namespace + "/" + pod)
	if !ok {
		return ""
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return ""
	}
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range cs {
			if c.Name == container {
				return c.Image
			}
		}
	}
	for _, c := range p.Spec.EphemeralContainers {
		if c.Name == container {
			return c.Image
		}
	}
	return ""
}

func groupOf(apiVersion string) string {
	if i := strings.IndexByte(apiVersion, '/'); i >= 0 {
		return apiVersion[:i]
	}
	return ""
}

// stripMetadata keeps what the caches are asked: name, namespace, the
// zone label and owner references. Annotations and managed fields are
// most of a Node's or ReplicaSet's metadata.
func stripMetadata(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown: keep as is
	}
	out := &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		OwnerReferences: m.OwnerReferences,
	}}
	if z, ok := m.Labels[ZoneLabel]; ok {
		out.Labels = map[string]string{ZoneLabel: z}
	}
	return out, nil
}

// stripNamespace keeps a namespace's name and labels.
func stripNamespace(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
		Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion, Labels: m.Labels,
	}}, nil
}

// NamespacesSynced reports whether the namespace list is loaded.
func (w *Watcher) NamespacesSynced() bool { return w.namespacesSynced.Load() }

// stripPod keeps a pod's identity, owners and container names and images.
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
		OwnerReferences: p.OwnerReferences,
	}}
	// The node and phase say where a restart would pull, and whether the
	// pod can restart at all (risk).
	out.Spec.NodeName = p.Spec.NodeName
	out.Status.Phase = p.Status.Phase
	// The pull secrets it names: credential lending shares this informer.
	out.Spec.ImagePullSecrets = p.Spec.ImagePullSecrets
	keep := func(cs []corev1.Container) []corev1.Container {
		if len(cs) == 0 {
			return nil
		}
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = corev1.Container{Name: c.Name, Image: c.Image, ImagePullPolicy: c.ImagePullPolicy}
		}
		return out
	}
	out.Spec.Containers = keep(p.Spec.Containers)
	out.Spec.InitContainers = keep(p.Spec.InitContainers)
	for _, c := range p.Spec.EphemeralContainers {
		out.Spec.EphemeralContainers = append(out.Spec.EphemeralContainers,
			corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: c.Name, Image: c.Image}})
	}
	return out, nil
}
