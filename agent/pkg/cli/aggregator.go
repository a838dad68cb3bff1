package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"google.golang.org/grpc"

	"github.com/pullwatch/pullwatch/agent/pkg/discovery"
	"github.com/pullwatch/pullwatch/pkg/kubeapi"
)

const aggregatorUsage = "gRPC `address` of pullwatch-aggregator: HOST:PORT through DNS " +
	"(e.g. pullwatch-aggregator.pullwatch.svc:9400; under hostNetwork that needs cluster DNS and dnsPolicy ClusterFirstWithHostNet; deploy/ uses the kubernetes:/// form), " +
	"or " + discovery.Form + ": the Service's ready pods, read from its EndpointSlices through the Kubernetes API and dialed directly, " +
	"with neither cluster DNS nor kube-proxy (e.g. kubernetes:///pullwatch-aggregator.pullwatch:grpc; PORT is a Service port's name, " +
	"or a number dialed on the pods as it is; needs RBAC list and watch on endpointslices in NAMESPACE). Required."

// replicaWatch follows the ready aggregator replicas: discovery.Watch
// bound to a target and a client of the Kubernetes API.
type replicaWatch struct {
	watch func(ctx context.Context, onChange func(addrs []string))
	// authority is the Service's DNS name, SERVICE.NAMESPACE.svc: the
	// :authority of the streams to its pods' addresses, and the name TLS
	// verifies the aggregator's certificate against.
	authority string
	// client and target make the lending channel's resolver (lenderConn).
	client discovery.API
	target discovery.Target
}

// aggregatorReplicas returns, for a kubernetes:/// aggregator, the watch of
// its Service's ready endpoints (each gets a stream of its own), with a
// client of the Kubernetes API, which must then be configured; nil for
// HOST:PORT, which is dialed as it is (one stream, through DNS).
func (c *common) aggregatorReplicas(log *slog.Logger, aggregator string) (*replicaWatch, error) {
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
	client, err := discovery.NewAPI(&cfg)
	if err != nil {
		return nil, fmt.Errorf("--aggregator %s: Kubernetes API client (%s): %w", aggregator, kube.Source, err)
	}
	log.Info("finding the aggregator through EndpointSlices", "service", target.Service, "namespace", target.Namespace,
		"port", target.Port, "api", kube.Source, "host", kube.Rest.Host)
	dlog := log.With("component", "discovery")
	return &replicaWatch{
		watch: func(ctx context.Context, onChange func([]string)) {
			discovery.Watch(ctx, client, target, dlog, onChange)
		},
		authority: target.ServerName(),
		client:    client,
		target:    target,
	}, nil
}

// lenderConn dials the channel credential lending (ReportService.Credentials)
// uses for a kubernetes:/// aggregator: one gRPC channel over the Service's
// ready endpoints (discovery's resolver), whose balancer sends each call to
// one ready replica: every replica lends alike, so unlike the report
// streams one is enough. security are the streams' own transport options.
func (rw *replicaWatch) lenderConn(log *slog.Logger, aggregator string, security []grpc.DialOption) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(aggregator, append(slices.Clone(security),
		grpc.WithResolvers(discovery.NewBuilder(rw.client, log.With("component", "discovery"))),
		grpc.WithAuthority(rw.authority))...)
	if err != nil {
		return nil, fmt.Errorf("aggregator address %q: %w", aggregator, err)
	}
	return conn, nil
}

// dialLender returns the connection credential lending uses for
// aggregator (check's --aggregator): the kubernetes:/// form through the
// Service's ready endpoints, HOST:PORT as it is. It does not connect: gRPC
// connects on first use.
func (c *common) dialLender(log *slog.Logger, aggregator string, security []grpc.DialOption) (*grpc.ClientConn, error) {
	rw, err := c.aggregatorReplicas(log, aggregator)
	if err != nil {
		return nil, err
	}
	if rw != nil {
		return rw.lenderConn(log, aggregator, security)
	}
	conn, err := grpc.NewClient(aggregator, security...)
	if err != nil {
		return nil, fmt.Errorf("aggregator address %q: %w", aggregator, err)
	}
	return conn, nil
}
