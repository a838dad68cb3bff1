package kubeapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known node labels.
const (
	LabelHostname = "kubernetes.io/hostname"
	LabelZone     = "topology.kubernetes.io/zone"
	LabelRegion   = "topology.kubernetes.io/region"
)

// EnsureNamespace creates namespace ns unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, ns string) error {
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubeapi: create namespace %s: %w", ns, err)
	}
	return nil
}

// NodeOptions describe a Node for CreateNode.
type NodeOptions struct {
	Name string
	// Labels are added to kubernetes.io/hostname=<Name> (and override it),
	// e.g. {LabelZone: "zone-a"}.
	Labels map[string]string
	// NotReady leaves the node's Ready condition False instead of True.
	NotReady bool
	// InternalIP is status.addresses' InternalIP; default 127.0.0.1.
	InternalIP string
	// ContainerRuntimeVersion is status.nodeInfo.containerRuntimeVersion;
	// default "containerd://1.6.20".
	ContainerRuntimeVersion string
}

// CreateNode creates a Node as a kubelet would register it (labels, then a
// status with a Ready condition, an address and node info). No kubelet
// keeps it up to date.
func (c *Cluster) CreateNode(ctx context.Context, o NodeOptions) (*corev1.Node, error) {
	if o.Name == "" {
		return nil, fmt.Errorf("kubeapi: CreateNode: empty name")
	}
	labels := map[string]string{LabelHostname: o.Name, "kubernetes.io/os": "linux"}
	maps.Copy(labels, o.Labels)
	node, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: create node %s: %w", o.Name, err)
	}
	ready := corev1.ConditionTrue
	if o.NotReady {
		ready = corev1.ConditionFalse
	}
	ip := o.InternalIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	rt := o.ContainerRuntimeVersion
	if rt == "" {
		rt = "containerd://1.6.20"
	}
	now := metav1.NewTime(time.Now())
	node.Status = corev1.NodeStatus{
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: ready, Reason: "PullwatchE2E",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: o.Name}},
		NodeInfo: corev1.NodeSystemInfo{
			ContainerRuntimeVersion: rt, KubeletVersion: "v1.34.2", OperatingSystem: "linux", Architecture: "amd64",
		},
	}
	node, err = c.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: update node %s status: %w", o.Name, err)
	}
	return node, nil
}

// PodOptions describe a Pod for CreatePod.
type PodOptions struct {
	Namespace string // default "default" (created if missing)
	Name      string
	// NodeName binds the pod to a node directly (spec.nodeName), as the
	// scheduler would.
	NodeName string
	// Images become containers c0, c1, … unless Containers is set.
	Images     []string
	Containers []corev1.Container
	// InitContainers are added as given.
	InitContainers []corev1.Container
	// ImagePullPolicy applies to the containers made from Images.
	ImagePullPolicy corev1.PullPolicy
	// ImagePullSecrets are names of Secrets in the pod's namespace.
	ImagePullSecrets []string
	OwnerReferences  []metav1.OwnerReference
	Labels           map[string]string
	// ServiceAccountName must match the ServiceAccount of a token bound to
	// this pod (ServiceAccountToken); nothing defaults it here.
	ServiceAccountName string
}

// CreatePod creates a Pod (bound to o.NodeName when set). Nothing runs it:
// its status stays empty unless the test sets one with UpdateStatus.
func (c *Cluster) CreatePod(ctx context.Context, o PodOptions) (*corev1.Pod, error) {
	if o.Namespace == "" {
		o.Namespace = metav1.NamespaceDefault
	}
	if o.Name == "" {
		return nil, fmt.Errorf("kubeapi: CreatePod: empty name")
	}
	if err := c.EnsureNamespace(ctx, o.Namespace); err != nil {
		return nil, err
	}
	containers := o.Containers
	if len(containers) == 0 {
		for i, img := range o.Images {
			containers = append(containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img, ImagePullPolicy: o.ImagePullPolicy})
		}
	}
	if len(containers) == 0 {
		return nil, fmt.Errorf("kubeapi: CreatePod %s/%s: no containers or images", o.Namespace, o.Name)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: o.Namespace, Name: o.Name, Labels: o.Labels, OwnerReferences: o.OwnerReferences,
		},
		Spec: corev1.PodSpec{
			NodeName:           o.NodeName,
			Containers:         containers,
			InitContainers:     o.InitContainers,
			ServiceAccountName: o.ServiceAccountName,
		},
	}
	for _, s := range o.ImagePullSecrets {
		pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
	}
	created, err := c.client.CoreV1().Pods(o.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: create pod %s/%s: %w", o.Namespace, o.Name, err)
	}
	return created, nil
}

// DeletePod deletes a pod at once (grace period 0), as a kubelet confirming
// its end would. A plain delete of a pod bound to a node only marks it
// Terminating: with no kubelet (and no pod GC controller) here it would
// stay so, still counting for field selectors and for tokens bound to it.
func (c *Cluster) DeletePod(ctx context.Context, namespace, name string) error {
	zero := int64(0)
	err := c.client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil {
		return fmt.Errorf("kubeapi: delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// CreateDockerConfigSecret creates a kubernetes.io/dockerconfigjson Secret
// (an image pull secret) with credentials user:pass for registry
// ("127.0.0.1:5000"), creating the namespace if missing.
func (c *Cluster) CreateDockerConfigSecret(ctx context.Context, namespace, name, registry, user, pass string) (*corev1.Secret, error) {
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	if err := c.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{
		"username": user, "password": pass,
		"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)),
	}}})
	if err != nil {
		return nil, err
	}
	s, err := c.client.CoreV1().Secrets(namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: cfg},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: create secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

// EnsureServiceAccount creates ServiceAccount namespace/name (and the
// namespace) unless it exists.
func (c *Cluster) EnsureServiceAccount(ctx context.Context, namespace, name string) error {
	if err := c.EnsureNamespace(ctx, namespace); err != nil {
		return err
	}
	_, err := c.client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubeapi: create serviceaccount %s/%s: %w", namespace, name, err)
	}
	return nil
}

// ServiceAccountToken mints a token for ServiceAccount namespace/name
// (created if missing) through the TokenRequest API, valid for an hour.
// audiences default to the API server's (ServiceAccountIssuer). With
// boundPod the token is bound to that pod (and so to its node): it dies with
// the pod, and TokenReview reports the pod's name/uid and the node's name in
// the user's extra fields. The pod must run as that ServiceAccount
// (spec.serviceAccountName == name). Note that the API server caches a
// successful token authentication for 10s, so a bound token still passes
// TokenReview for up to 10s after its pod is gone (see DeletePod).
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string, audiences []string, boundPod *corev1.Pod) (string, error) {
	if err := c.EnsureServiceAccount(ctx, namespace, name); err != nil {
		return "", err
	}
	exp := int64(3600)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: audiences, ExpirationSeconds: &exp,
	}}
	if boundPod != nil {
		if boundPod.Namespace != namespace {
			return "", fmt.Errorf("kubeapi: pod %s/%s is not in namespace %s", boundPod.Namespace, boundPod.Name, namespace)
		}
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: boundPod.Name, UID: boundPod.UID,
		}
	}
	out, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("kubeapi: token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return out.Status.Token, nil
}

// ReviewToken asks the API server (TokenReview, as the admin) who token
// belongs to, for the given audiences (nil: the API server's own).
func (c *Cluster) ReviewToken(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	r, err := c.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubeapi: token review: %w", err)
	}
	return &r.Status, nil
}
