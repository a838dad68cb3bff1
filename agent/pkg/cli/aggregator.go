package cli

import (
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/kubernetes"

	"github.com/pullwatch/pullwatch/agent/pkg/discovery"
	"github.com/pullwatch/pullwatch/pkg/kubeapi"
)

const aggregatorUsage = "gRPC `address` of pullwatch-aggregator: HOST:PORT through DNS " +
	"(e.g. pullwatch-aggregator.pullwatch.svc:9400; under hostNetwork that needs cluster DNS and dnsPolicy ClusterFirstWithHostNet; deploy/ uses the kubernetes:/// form), " +
	"or " + discovery.Form + ": the Service's ready pods, read from its EndpointSlices through the Kubernetes API and dialed directly, " +
	"with neither cluster DNS nor kube-proxy (e.g. kubernetes:///pullwatch-aggregator.pullwatch:grpc; PORT is a Service port's name, " +
	"or a number dialed on the pods as it is; needs RBAC list and watch on endpointslices in NAMESPACE). Required."

// dialAggregator returns the client connection to the aggregator at
// address, for the report stream and credential lending alike. It does
// not connect: gRPC connects on first use.
func (c *common) dialAggregator(log *slog.Logger, address string) (*grpc.ClientConn, error) {
	opts, err := c.aggregatorDialOptions(log, address)
	if err != nil {
		return nil, err
	}
	// Transport security and node-bound credentials come with the trust
	// issue; until then the stream is plaintext inside the cluster network.
	conn, err := grpc.NewClient(address, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return nil, fmt.Errorf("aggregator address %q: %w", address, err)
	}
	return conn, nil
}

// aggregatorDialOptions returns what the gRPC client needs to dial
// aggregator: nothing for HOST:PORT; for a kubernetes:/// target, the
// EndpointSlice resolver with a client of the Kubernetes API, which must
// then be configured.
func (c *common) aggregatorDialOptions(log *slog.Logger, aggregator string) ([]grpc.DialOption, error) {
	if !discovery.IsTarget(aggregator) {
		return nil, nil
	}
	target, err := discovery.ParseTarget(aggregator)
	if err != nil {
		return nil, fmt.Errorf("--aggregator: %w", err)
	}
	kube, err := kubeapi.Load(c.kubeconfig)
	if errors.Is(err, kubeapi.ErrNotConfigured) {
		return nil, fmt.Errorf("--aggregator %s finds the aggregator through the Kubernetes API, which is not configured (%v): "+
			"run in a pod with its ServiceAccount token mounted, set --kubeconfig (env KUBECONFIG), or give --aggregator as HOST:PORT", aggregator, err)
	}
	if err != nil {
		return nil, fmt.Errorf("--aggregator %s: %w", aggregator, err)
	}
	cfg := *kube.Rest
	cfg.UserAgent = "pullwatch-agent/" + Version
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		return nil, fmt.Errorf("--aggregator %s: Kubernetes API client (%s): %w", aggregator, kube.Source, err)
	}
	log.Info("finding the aggregator through EndpointSlices", "service", target.Service, "namespace", target.Namespace,
		"port", target.Port, "api", kube.Source, "host", kube.Rest.Host)
	return []grpc.DialOption{grpc.WithResolvers(discovery.NewBuilder(client, log.With("component", "discovery")))}, nil
}
