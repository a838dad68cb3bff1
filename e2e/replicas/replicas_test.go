// Package replicas tests the aggregator's replicas on real parts: two real
// aggregator processes with the real kube-apiserver's Node list, one real
// agent daemon on the lab node that finds both in a real EndpointSlice of
// the aggregator's Service and streams to each; one replica killed and
// restarted. flood_test.go floods an aggregator with streams and
// snapshots for nodes that do not exist.
package replicas

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/lab"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
	"github.com/pullwatch/pullwatch/e2e/harness/registry"
)

func TestMain(m *testing.M) { lab.Main(m) }

const (
	namespace = "pullwatch"
	service   = "pullwatch-aggregator"
	nodeName  = "replica-node"
	// interval is the agent's --interval: a restarted replica must be
	// complete within one.
	interval = 5 * time.Second
)

// replica is one aggregator process and the EndpointSlice naming it.
type replica struct {
	name               string
	grpcAddr, httpAddr string
	p                  *proc.Process
}

func (r *replica) metrics() string {
	_, body := lab.HTTPGet("http://" + r.httpAddr + "/metrics")
	return body
}

// value returns the value of the series (its full name and labels, as
// exposed) in body.
func value(body, series string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// imageLines are the node's pullwatch_node_image_status series in body:
// what a complete replica must show.
func imageLines(body string) string {
	return lab.GrepLines(body, `pullwatch_node_image_status{image=`)
}

func slice(name, grpcAddr string, ready bool) *discoveryv1.EndpointSlice {
	host, port, _ := net.SplitHostPort(grpcAddr)
	n, _ := strconv.Atoi(port)
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{
			// As the EndpointSlice controller writes them: agents trust no other slices.
			discoveryv1.LabelServiceName: service, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{host},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: name},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false)},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To(int32(n)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
}

// hostIP is a global unicast IPv4 address of this host's.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	proc.SkipOrFail(t, "no global IPv4 address on this host for the replicas' EndpointSlices (loopback is refused)")
	return ""
}

func setSlice(t *testing.T, ctx context.Context, cl kubernetes.Interface, s *discoveryv1.EndpointSlice) {
	t.Helper()
	api := cl.DiscoveryV1().EndpointSlices(namespace)
	cur, err := api.Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		if _, err := api.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create EndpointSlice %s: %v", s.Name, err)
		}
		return
	}
	s.ResourceVersion = cur.ResourceVersion
	if _, err := api.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update EndpointSlice %s: %v", s.Name, err)
	}
}

// cluster starts the kube-apiserver with the Node the agent reports as,
// the aggregator's namespace and Service.
func cluster(t *testing.T, ctx context.Context) *kubeapi.Cluster {
	t.Helper()
	kube := lab.Kube(ctx, t)
	if _, err := kube.CreateNode(ctx, kubeapi.NodeOptions{Name: nodeName}); err != nil {
		t.Fatal(err)
	}
	if err := kube.EnsureNamespace(ctx, namespace); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.Client().CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: namespace},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app.kubernetes.io/name": service},
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 9400, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return kube
}

func TestAgentStreamsToEveryReplica(t *testing.T) {
	l := lab.Need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kube := cluster(t, ctx)
	cl := kube.Client()

	// An image on the lab node, so the node has something to report.
	if _, err := registry.PushSleeper(ctx, l.Reg, "replicas/app", "v1"); err != nil {
		t.Fatal(err)
	}
	ref := l.Reg.Ref("replicas/app", "v1")
	if _, err := l.Containerd.PullImage(ctx, ref, nil); err != nil {
		t.Fatal(err)
	}

	// EndpointSlices refuse loopback addresses: the replicas listen on
	// the host's own address, as pods on theirs.
	host := hostIP(t)
	aggArgs := []string{"--kubeconfig", kube.Kubeconfig(), "--stale-after", "30s"}
	start := func(name string) *replica {
		port, err := proc.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{name: name, grpcAddr: net.JoinHostPort(host, strconv.Itoa(port))}
		_, r.httpAddr, r.p = l.StartAggregator(t, append(append([]string{}, aggArgs...), "--grpc-listen", r.grpcAddr)...)
		return r
	}
	a, b := start("aggregator-a"), start("aggregator-b")
	setSlice(t, ctx, cl, slice(a.name, a.grpcAddr, true))
	setSlice(t, ctx, cl, slice(b.name, b.grpcAddr, true))

	agentHTTP, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	agent := l.StartAgent(t, "kubernetes:///"+service+"."+namespace+":grpc",
		[]string{"NODE_NAME=" + nodeName, "KUBECONFIG=" + kube.Kubeconfig()},
		"--interval", interval.String(), "--http-listen", fmt.Sprintf("127.0.0.1:%d", agentHTTP), "--pull-secrets=off")

	imageSeries := fmt.Sprintf(`pullwatch_node_image_status{image=%q,node=%q,status="available"}`, ref, nodeName)
	for _, r := range []*replica{a, b} {
		lab.WaitFor(t, 60*time.Second, "the node's report on "+r.name, func() (bool, string) {
			body := r.metrics()
			v, _ := value(body, imageSeries)
			c, _ := value(body, "pullwatch_agents_connected")
			return v == 1 && c == 1, imageLines(body) + "\n" + lab.GrepLines(body, "pullwatch_agents_connected")
		}, agent, r.p)
	}
	agentMetrics := func() string {
		_, body := lab.HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", agentHTTP))
		return body
	}
	lab.WaitFor(t, 30*time.Second, "the agent connected to both replicas", func() (bool, string) {
		body := agentMetrics()
		va, _ := value(body, fmt.Sprintf(`pullwatch_agent_aggregator_connected{aggregator=%q}`, a.grpcAddr))
		vb, _ := value(body, fmt.Sprintf(`pullwatch_agent_aggregator_connected{aggregator=%q}`, b.grpcAddr))
		return va == 1 && vb == 1, lab.GrepLines(body, "pullwatch_agent_aggregator_connected")
	}, agent)

	// Kill A (no graceful drain). Kubernetes would mark its endpoint not
	// ready; the agent keeps streaming to B, which has no gap: its last
	// report of the node stays within an interval (plus the round).
	if err := a.p.Signal(9); err != nil {
		t.Fatal(err)
	}
	a.p.Wait(10 * time.Second)
	killed := time.Now()
	setSlice(t, ctx, cl, slice(a.name, a.grpcAddr, false))
	lastSeries := fmt.Sprintf(`pullwatch_agent_last_report_timestamp_seconds{node=%q}`, nodeName)
	var worstAge time.Duration
	for time.Since(killed) < 3*interval {
		body := b.metrics()
		last, ok := value(body, lastSeries)
		if !ok {
			t.Fatalf("B lost the node while A was down:\n%s", imageLines(body))
		}
		if v, _ := value(body, imageSeries); v != 1 {
			t.Fatalf("B's image status changed while A was down:\n%s", imageLines(body))
		}
		if v, _ := value(body, "pullwatch_nodes{state=\"stale\"}"); v != 0 {
			t.Fatalf("the node went stale on B while A was down")
		}
		worstAge = max(worstAge, time.Since(time.Unix(0, int64(last*1e9))))
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("while A was down, B's last report of the node was at most %s old (interval %s)", worstAge.Round(time.Millisecond), interval)
	if worstAge > 2*interval {
		t.Errorf("B went %s without a report while A was down; the agent's stream to B should not depend on A", worstAge)
	}

	// A restarts on its address (a restarted container keeps its pod's
	// address) and becomes ready: it is complete within one interval.
	a.p = func() *proc.Process {
		_, httpAddr, p := l.StartAggregator(t, append(append([]string{}, aggArgs...), "--grpc-listen", a.grpcAddr)...)
		a.httpAddr = httpAddr
		return p
	}()
	ready := time.Now()
	setSlice(t, ctx, cl, slice(a.name, a.grpcAddr, true))
	want := imageLines(b.metrics())
	var complete time.Duration
	lab.WaitFor(t, interval, "the restarted replica complete (the node's image series as on B)", func() (bool, string) {
		got := imageLines(a.metrics())
		complete = time.Since(ready)
		return got == want && got != "", "A:\n" + got + "\nB:\n" + want
	}, agent, a.p)
	t.Logf("the restarted replica had the node's full state %s after it was ready (interval %s)", complete.Round(time.Millisecond), interval)

	// B never saw a second agent for the node, nor a gap.
	if v, _ := value(b.metrics(), "pullwatch_agents_connected"); v != 1 {
		t.Errorf("B: pullwatch_agents_connected %v, want 1", v)
	}
	lab.WaitFor(t, 30*time.Second, "the agent reconnected to A", func() (bool, string) {
		body := agentMetrics()
		v, _ := value(body, fmt.Sprintf(`pullwatch_agent_aggregator_connected{aggregator=%q}`, a.grpcAddr))
		return v == 1, lab.GrepLines(body, "pullwatch_agent_aggregator_connected")
	}, agent)
	code, _ := lab.HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", agentHTTP))
	if code != http.StatusOK {
		t.Errorf("agent /readyz %d with both replicas up", code)
	}
}
