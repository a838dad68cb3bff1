package risk_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	pullwatchv1 "github.com/pullwatch/pullwatch/proto/pullwatch/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pullwatch/pullwatch/e2e/harness/containerd"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

// sample is the value of the first series of family on the page whose
// labels include every k="v" of labels, and whether there is one.
func sample(body, family string, labels map[string]string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, family+"{") {
			continue
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", k, v)) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return f, err == nil
	}
	return 0, false
}

// waitMetric waits until cond holds on the aggregator's /metrics.
func waitMetric(t *testing.T, url, what string, cond func(body string) (bool, string), procs ...*proc.Process) string {
	t.Helper()
	var last string
	lab.WaitFor(t, 90*time.Second, what, func() (bool, string) {
		_, last = lab.HTTPGet(url)
		ok, detail := cond(last)
		return ok, detail + "\n" + lab.GrepLines(last, "pullwatch_container_at_risk") + "\n" + lab.GrepLines(last, "pullwatch_workload_risk_nodes") +
			"\n" + lab.GrepLines(last, "pullwatch_node_image_status{")
	}, procs...)
	return last
}

// syntheticNode is a second node the lab has no containerd for: it reaches
// reg (or not) for an image of its own, so the aggregator knows its path
// to the registry.
func syntheticNode(name, reg, image string, reaches bool) *pullwatchv1.NodeSnapshot {
	st, code := pullwatchv1.ImageStatus_IMAGE_STATUS_AVAILABLE, int32(200)
	if !reaches {
		st, code = pullwatchv1.ImageStatus_IMAGE_STATUS_UNREACHABLE, 0
	}
	now := timestamppb.Now()
	return &pullwatchv1.NodeSnapshot{
		Node:       &pullwatchv1.Node{Name: name, Os: "linux", Architecture: "amd64", Runtime: &pullwatchv1.Runtime{Name: "containerd", Version: "2.0"}},
		ObservedAt: now, Interval: durationpb.New(time.Minute),
		Images: []*pullwatchv1.ImageReport{{
			Image: image, Registry: reg, ImageId: "sha256:" + strings.Repeat("1", 64), Status: st, Reason: st.Word(), CheckedAt: now,
			Endpoints: []*pullwatchv1.EndpointResult{{Url: "http://" + reg, Role: pullwatchv1.EndpointRole_ENDPOINT_ROLE_UPSTREAM,
				Status: st, HttpStatus: code, CheckedAt: now, Reason: st.Word()}},
		}},
	}
}

// TestRisk: a pod on the lab node, in the API as bound to that node, with
// three containers: "cached" (cached, IfNotPresent), "always" (cached,
// pull policy Always) and "rmi" (cached, IfNotPresent, removed from the
// cache later). The registry stops: only "always" is at risk, "cached" and
// "rmi" are safe; "rmi" is at risk once its image is removed. A second
// node losing its path to the registry moves the workload's count. The
// node gets RegistryReachable=False and an Event, then True again, written
// by the aggregator under the node-condition component's example
// ValidatingAdmissionPolicy, which refuses it any other change to a Node.
func TestRisk(t *testing.T) {
	l := lab.Need(t)
	top := t // processes started in subtests live as long as the test
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cluster := lab.Kube(ctx, t)
	kubeconfig := lab.ApplyShippedRBAC(ctx, t, cluster, "aggregator.yaml", "components/node-condition/rbac.yaml")

	reg := lab.Registry(t, "risk-registry", registry.Options{})
	refs := map[string]string{}
	for _, c := range []string{"cached", "always", "rmi", "other"} {
		if _, err := registry.PushSleeper(ctx, reg, "risk/"+c, "v1"); err != nil {
			t.Fatal(err)
		}
		refs[c] = reg.Ref("risk/"+c, "v1")
	}
	node := l.Node()
	for _, c := range []string{"cached", "always", "rmi"} {
		node.Pull(t, refs[c], nil)
	}
	t.Cleanup(func() { node.RemoveImages(t, refs["cached"], refs["always"], refs["rmi"]) })

	const nodeName, node2, ns, podName = "risk-node", "risk-node-2", "risk", "app"
	for _, n := range []string{nodeName, node2} {
		if _, err := cluster.CreateNode(ctx, kubeapi.NodeOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	// The policy as deploy/components/node-condition ships it, enforced
	// once a dry run of what it forbids (the aggregator setting the
	// kubelet's Ready) is refused: the condition writer below runs under it.
	aggregatorClient, err := cluster.ClientFor("system:serviceaccount:pullwatch:pullwatch-aggregator",
		[]string{"system:serviceaccounts", "system:serviceaccounts:pullwatch", "system:authenticated"})
	if err != nil {
		t.Fatal(err)
	}
	lab.ApplyAdmissionPolicy(ctx, t, cluster, "components/node-condition/admission-policy.example.yaml", func() error {
		_, err := aggregatorClient.CoreV1().Nodes().Patch(ctx, nodeName, types.StrategicMergePatchType,
			[]byte(`{"status":{"conditions":[{"type":"Ready","status":"False"}]}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, "status")
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			return fmt.Errorf("the aggregator's dry-run patch of Ready was not refused: %v", err)
		}
		return nil
	})
	if _, err := cluster.CreatePod(ctx, kubeapi.PodOptions{Namespace: ns, Name: podName, NodeName: nodeName, Containers: []corev1.Container{
		{Name: "cached", Image: refs["cached"], ImagePullPolicy: corev1.PullIfNotPresent},
		{Name: "always", Image: refs["always"], ImagePullPolicy: corev1.PullAlways},
		{Name: "rmi", Image: refs["rmi"], ImagePullPolicy: corev1.PullIfNotPresent},
	}}); err != nil {
		t.Fatal(err)
	}
	sandbox, err := node.Containerd.RunPod(ctx, containerd.PodSpec{Namespace: ns, Name: podName, Containers: []containerd.ContainerSpec{
		{Name: "cached", Image: refs["cached"]}, {Name: "always", Image: refs["always"]}, {Name: "rmi", Image: refs["rmi"]},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Containerd.RemovePod(context.Background(), sandbox) })

	grpcAddr, httpAddr, agg := l.StartAggregator(t, "--kubeconfig", kubeconfig, "--node-condition", "--stale-after", "10m")
	stateFile := filepath.Join(t.TempDir(), "agent-state.json")
	agentArgs := []string{"--interval", "2s", "--confirm", "2", "--state-file", stateFile, "--events=false"}
	agent := l.StartAgent(t, grpcAddr, []string{"NODE_NAME=" + nodeName}, agentArgs...)
	metricsURL := "http://" + httpAddr + "/metrics"
	lab.ReportSnapshot(t, grpcAddr, syntheticNode(node2, reg.Addr(), refs["other"], true))

	workload := func(container string) map[string]string {
		return map[string]string{"namespace": ns, "kind": "pod", "name": podName, "container": container}
	}
	atRisk := func(container string) map[string]string {
		return map[string]string{"node": nodeName, "namespace": ns, "pod": podName, "container": container}
	}

	t.Run("registry up: nothing at risk", func(t *testing.T) {
		waitMetric(t, metricsURL, "every workload container assessed, none at risk", func(body string) (bool, string) {
			for _, c := range []string{"cached", "always", "rmi"} {
				if v, ok := sample(body, "pullwatch_workload_risk_nodes", workload(c)); !ok || v != 0 {
					return false, "workload " + c + " not 0"
				}
			}
			_, any := sample(body, "pullwatch_container_at_risk", map[string]string{"namespace": ns})
			return !any, "a container at risk"
		}, agent, agg)
		waitCondition(t, ctx, cluster, nodeName, corev1.ConditionTrue)
	})

	var since float64
	t.Run("registry stopped: Always at risk, cached IfNotPresent safe", func(t *testing.T) {
		lab.Stopped(t, reg)
		body := waitMetric(t, metricsURL, "the Always container at risk (pull_always)", func(body string) (bool, string) {
			lbl := atRisk("always")
			lbl["reason"], lbl["image"] = "pull_always", refs["always"]
			v, ok := sample(body, "pullwatch_container_at_risk", lbl)
			return ok && v == 1, "no at-risk series for always"
		}, agent, agg)
		for _, c := range []string{"cached", "rmi"} {
			if _, ok := sample(body, "pullwatch_container_at_risk", atRisk(c)); ok {
				t.Errorf("container %s (cached, IfNotPresent) is at risk; it restarts from the cache", c)
			}
		}
		if !strings.Contains(body, "pullwatch_containers_safe_cached 2") {
			t.Errorf("want pullwatch_containers_safe_cached 2:\n%s", lab.GrepLines(body, "pullwatch_containers_safe_cached"))
		}
		if v, ok := sample(body, "pullwatch_workload_risk_nodes", workload("always")); !ok || v != 1 {
			t.Errorf("workload always: risk nodes %v (found %v), want 1 (this node; node-2 still reaches the registry)", v, ok)
		}
		var ok bool
		since, ok = sample(body, "pullwatch_node_image_status_since_timestamp_seconds", map[string]string{"node": nodeName, "image": refs["always"], "status": "unreachable"})
		if !ok || since <= 0 || time.Since(time.Unix(int64(since), 0)) > 2*time.Minute {
			t.Errorf("since of the unreachable image: %v (found %v), want a recent time", since, ok)
		}
		_, page := lab.HTTPGet("http://" + httpAddr + "/")
		for _, want := range []string{"Pods at risk", podName, "pull_always", "2 container(s) use an image", "failing since"} {
			if !strings.Contains(page, want) {
				t.Errorf("status page lacks %q", want)
			}
		}
		waitCondition(t, ctx, cluster, nodeName, corev1.ConditionFalse)
		waitEvent(t, ctx, cluster, nodeName, "RegistryUnreachable")

		t.Run("agent restart keeps since", func(t *testing.T) {
			if err := agent.Stop(5 * time.Second); err != nil {
				t.Logf("stop agent: %v", err)
			}
			agent = l.StartAgent(top, grpcAddr, []string{"NODE_NAME=" + nodeName}, agentArgs...)
			time.Sleep(5 * time.Second) // a few rounds of the new agent
			waitMetric(t, metricsURL, "the same since after the agent restart", func(body string) (bool, string) {
				v, ok := sample(body, "pullwatch_node_image_status_since_timestamp_seconds", map[string]string{"node": nodeName, "image": refs["always"]})
				return ok && v == since, fmt.Sprintf("since %v (found %v), want %v", v, ok, since)
			}, agent, agg)
		})

		t.Run("a second node loses its path: the workload count moves", func(t *testing.T) {
			lab.ReportSnapshot(t, grpcAddr, syntheticNode(node2, reg.Addr(), refs["other"], false))
			waitMetric(t, metricsURL, "workload always failing on 2 nodes", func(body string) (bool, string) {
				v, ok := sample(body, "pullwatch_workload_risk_nodes", workload("always"))
				return ok && v == 2, fmt.Sprintf("always: %v", v)
			}, agent, agg)
		})

		t.Run("cached image removed: at risk, not cached", func(t *testing.T) {
			node.RemoveImages(t, refs["rmi"])
			waitMetric(t, metricsURL, "the rmi container at risk (not_cached)", func(body string) (bool, string) {
				lbl := atRisk("rmi")
				lbl["reason"] = "not_cached"
				_, ok := sample(body, "pullwatch_container_at_risk", lbl)
				return ok, "no not_cached series for rmi"
			}, agent, agg)
		})
	})

	t.Run("filters: an ignored image and an unselected namespace are gone from metrics and the page", func(t *testing.T) {
		kc := lab.ApplyShippedRBAC(ctx, t, cluster, "components/namespace-filter/rbac.yaml")
		grpc2, httpAddr2, agg2 := l.StartAggregator(t, "--kubeconfig", kc, "--stale-after", "10m", "--compat-metrics=both",
			"--ignored-images", `/risk/always:~^nothing$`, "--namespace-label", "pullwatch.io/watch=true")
		url2 := "http://" + httpAddr2 + "/metrics"
		// Not labelled yet: nothing of namespace risk is watched.
		// A second agent on the same node, without a state file.
		agent2 := l.StartAgent(t, grpc2, []string{"NODE_NAME=" + nodeName}, "--interval", "2s", "--events=false")
		time.Sleep(4 * time.Second)
		_, body := lab.HTTPGet(url2)
		if strings.Contains(body, "/risk/") {
			t.Errorf("namespace %s is not selected, yet its images show:\n%s", ns, lab.GrepLines(body, "pullwatch_node_image_status"))
		}
		nsObj, err := cluster.Client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if nsObj.Labels == nil {
			nsObj.Labels = map[string]string{}
		}
		nsObj.Labels["pullwatch.io/watch"] = "true"
		if _, err := cluster.Client().CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		body = waitMetric(t, url2, "namespace risk watched, without the ignored image", func(body string) (bool, string) {
			_, ok := sample(body, "pullwatch_node_image_status", map[string]string{"image": refs["cached"]})
			return ok, "no series for the cached image"
		}, agent2, agg2)
		for _, family := range []string{"pullwatch_node_image_status", "pullwatch_container_at_risk", "pullwatch_workload_risk_nodes",
			"k8s_image_availability_exporter_available", "k8s_image_availability_exporter_registry_unavailable"} {
			if _, ok := sample(body, family, map[string]string{"image": refs["always"]}); ok {
				t.Errorf("%s has the ignored image %s", family, refs["always"])
			}
		}
		if _, ok := sample(body, "pullwatch_workload_risk_nodes", map[string]string{"container": "cached"}); !ok {
			t.Errorf("no workload series for the watched container cached")
		}
		_, page := lab.HTTPGet("http://" + httpAddr2 + "/")
		if strings.Contains(page, refs["always"]) {
			t.Errorf("the status page shows the ignored image %s", refs["always"])
		}
	})

	t.Run("registry back: nothing at risk, condition True with an Event", func(t *testing.T) {
		// Stopped's cleanup restarted the registry; the removed image is
		// still missing from the cache but pullable again.
		waitMetric(t, metricsURL, "no container at risk", func(body string) (bool, string) {
			_, any := sample(body, "pullwatch_container_at_risk", map[string]string{"namespace": ns})
			return !any, "still at risk"
		}, agent, agg)
		waitCondition(t, ctx, cluster, nodeName, corev1.ConditionTrue)
		waitEvent(t, ctx, cluster, nodeName, "RegistriesReachable")
	})
}

func waitCondition(t *testing.T, ctx context.Context, c *kubeapi.Cluster, node string, want corev1.ConditionStatus) {
	t.Helper()
	lab.WaitFor(t, 60*time.Second, "node "+node+" RegistryReachable="+string(want), func() (bool, string) {
		n, err := c.Client().CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := false
		var got *corev1.NodeCondition
		for i, cond := range n.Status.Conditions {
			switch cond.Type {
			case corev1.NodeReady:
				ready = cond.Status == corev1.ConditionTrue
			case "RegistryReachable":
				got = &n.Status.Conditions[i]
			}
		}
		if got != nil {
			// The other conditions (the kubelet's Ready) are left alone.
			return got.Status == want && ready, fmt.Sprintf("%+v (Ready kept: %v)", *got, ready)
		}
		return false, fmt.Sprintf("no RegistryReachable condition: %+v", n.Status.Conditions)
	})
}

func waitEvent(t *testing.T, ctx context.Context, c *kubeapi.Cluster, node, reason string) {
	t.Helper()
	lab.WaitFor(t, 30*time.Second, "an Event "+reason+" about node "+node, func() (bool, string) {
		evs, err := c.Client().CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + node})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Reason == reason && e.Source.Component == "pullwatch-aggregator" {
				return true, ""
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, strings.Join(seen, "\n")
	})
}
