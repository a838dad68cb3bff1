// Package discovery tests the agent's EndpointSlice resolver
// (agent/pkg/discovery) against a real kube-apiserver: a gRPC client dials
// kubernetes:///pullwatch-aggregator.pullwatch:grpc as the agent's
// ServiceAccount, with only the RBAC proposed for the agent, and follows
// the Service's EndpointSlices to two local gRPC servers.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/agent/pkg/discovery"
	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

const (
	namespace = "pullwatch"
	service   = "pullwatch-aggregator"
	agentSA   = "pullwatch-agent"
	target    = "kubernetes:///pullwatch-aggregator.pullwatch:grpc"
)

// needKube starts etcd and kube-apiserver, or skips when they are not
// built (fails with PULLWATCH_REQUIRE_REAL=1).
func needKube(t *testing.T, ctx context.Context) *kubeapi.Cluster {
	t.Helper()
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		if !errors.Is(err, kubeapi.ErrNoBinaries) {
			t.Fatal(err)
		}
		proc.SkipOrFail(t, err.Error())
	}
	c, err := kubeapi.Start(ctx, t.TempDir(), kubeapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}

// serveHealth runs a gRPC health server on 127.0.0.1 and returns its port.
func serveHealth(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

// podNet stands for the pod network. The API server rejects loopback
// endpoint addresses, so the slices carry addresses of this documentation
// range (TEST-NET-1), and the client's dialer (podDialer) connects to the
// same port on 127.0.0.1 instead: nothing leaves the machine.
var podNet = netip.MustParsePrefix("192.0.2.0/24")

// podDialer dials an address of podNet on 127.0.0.1, and nothing else.
func podDialer(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !podNet.Contains(ap.Addr()) {
		return nil, fmt.Errorf("test dialer: %s is not in %s", addr, podNet)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ap.Port()))))
}

// endpointSlice is a slice of the aggregator's Service with one endpoint,
// ip, on port (named grpc).
func endpointSlice(name, ip string, port int32, ready bool) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: service,
				// As the EndpointSlice controller writes them (none runs
				// here): agents trust no other slices.
				discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: name},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false)},
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("metrics"), Port: ptr.To[int32](1), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("grpc"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
}

// agentClient is the agent's EndpointSlice client (discovery.NewAPI, as
// pullwatch-agent makes it) with a real token of its ServiceAccount.
func agentClient(t *testing.T, ctx context.Context, c *kubeapi.Cluster) discovery.API {
	t.Helper()
	if err := c.EnsureServiceAccount(ctx, namespace, agentSA); err != nil {
		t.Fatal(err)
	}
	token, err := c.ServiceAccountToken(ctx, namespace, agentSA, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	api, err := discovery.NewAPI(&rest.Config{
		Host:            c.URL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData()},
	})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

func applyAgentRBAC(t *testing.T, ctx context.Context, admin kubernetes.Interface) {
	t.Helper()
	// The Role and RoleBinding deploy/daemonset.yaml ships.
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(filepath.Join(root, "deploy", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	var binding rbacv1.RoleBinding
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(manifest), -1) {
		switch {
		case regexp.MustCompile(`(?m)^kind: Role$`).MatchString(doc):
			err = yaml.UnmarshalStrict([]byte(doc), &role)
		case regexp.MustCompile(`(?m)^kind: RoleBinding$`).MatchString(doc):
			err = yaml.UnmarshalStrict([]byte(doc), &binding)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if role.Name != agentSA || binding.Name != agentSA {
		t.Fatalf("deploy/daemonset.yaml: no Role and RoleBinding %s (found %q, %q)", agentSA, role.Name, binding.Name)
	}
	if _, err := admin.RbacV1().Roles(namespace).Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(namespace).Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// call makes one health check without waiting for a ready connection and
// returns the address of the server that answered (on 127.0.0.1).
func call(ctx context.Context, hc healthpb.HealthClient) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.Addr.String(), nil
}

// eventually calls until check accepts the outcome of a call.
func eventually(t *testing.T, ctx context.Context, hc healthpb.HealthClient, what string, check func(addr string, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var addr string
	var err error
	for time.Now().Before(deadline) {
		addr, err = call(ctx, hc)
		if check(addr, err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within 30s; last call: address %q, err %v", what, addr, err)
}

func TestResolverFollowsEndpointSlices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := needKube(t, ctx)
	admin := c.Client()
	if err := c.EnsureNamespace(ctx, namespace); err != nil {
		t.Fatal(err)
	}
	// The Service as deploy/aggregator.yaml has it; no controller turns it
	// into EndpointSlices here, the test writes them.
	if _, err := admin.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: namespace},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app.kubernetes.io/name": service},
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 9400, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Two aggregator pods, 192.0.2.1 and 192.0.2.2, each in a slice of its
	// own (their ports differ: each is a local server).
	portA, portB := serveHealth(t), serveHealth(t)
	slices := admin.DiscoveryV1().EndpointSlices(namespace)
	for _, s := range []*discoveryv1.EndpointSlice{
		endpointSlice("aggregator-a", "192.0.2.1", portA, true),
		endpointSlice("aggregator-b", "192.0.2.2", portB, true),
	} {
		if _, err := slices.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// pick_first takes the first of the sorted addresses: 192.0.2.1's.
	first := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(portA)))
	second := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(portB)))
	firstSlice, secondSlice := "aggregator-a", "aggregator-b"

	log := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	conn, err := grpc.NewClient(target,
		grpc.WithResolvers(discovery.NewBuilder(agentClient(t, ctx, c), log)),
		grpc.WithContextDialer(podDialer),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)

	// Without RBAC the client learns why it has no address.
	eventually(t, ctx, hc, "forbidden before the Role is bound", func(_ string, err error) bool {
		return status.Code(err) == codes.Unavailable &&
			strings.Contains(err.Error(), "forbidden") &&
			strings.Contains(err.Error(), "(the agent needs list and watch on endpointslices in namespace pullwatch)")
	})
	applyAgentRBAC(t, ctx, admin)

	eventually(t, ctx, hc, "calls reach the first endpoint once the Role is bound", func(addr string, err error) bool {
		return err == nil && addr == first
	})

	// The first endpoint stops being ready: the client moves to the other.
	setReady(t, ctx, slices, firstSlice, false)
	eventually(t, ctx, hc, "calls move to the ready endpoint", func(addr string, err error) bool {
		return err == nil && addr == second
	})
	for range 5 {
		if addr, err := call(ctx, hc); err != nil || addr != second {
			t.Fatalf("call after the move: address %q, err %v; want %s", addr, err, second)
		}
	}

	// The other's slice goes away: no ready endpoint, calls fail and say why.
	if err := slices.Delete(ctx, secondSlice, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, hc, "calls fail without a ready endpoint", func(_ string, err error) bool {
		return status.Code(err) == codes.Unavailable &&
			strings.Contains(err.Error(), "no ready aggregator endpoints in pullwatch-aggregator.pullwatch: its one endpoint is not ready")
	})

	// Ready again: calls succeed again.
	setReady(t, ctx, slices, firstSlice, true)
	eventually(t, ctx, hc, "calls come back when an endpoint is ready again", func(addr string, err error) bool {
		return err == nil && addr == first
	})
}

func setReady(t *testing.T, ctx context.Context, slices interface {
	Get(context.Context, string, metav1.GetOptions) (*discoveryv1.EndpointSlice, error)
	Update(context.Context, *discoveryv1.EndpointSlice, metav1.UpdateOptions) (*discoveryv1.EndpointSlice, error)
}, name string, ready bool) {
	t.Helper()
	s, err := slices.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints[0].Conditions.Ready = ptr.To(ready)
	s.Endpoints[0].Conditions.Serving = ptr.To(ready)
	if _, err := slices.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(fmt.Errorf("mark %s ready=%v: %w", name, ready, err))
	}
}

// tWriter sends the resolver's log to the test's.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
