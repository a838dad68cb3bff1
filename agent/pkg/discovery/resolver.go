package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/resolver"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// Builder makes the resolvers of kubernetes:/// targets; give it to a gRPC
// client with grpc.WithResolvers. Each resolver watches the EndpointSlices
// labelled kubernetes.io/service-name=SERVICE in NAMESPACE (list and watch
// on endpointslices in that namespace are all the RBAC it needs) and hands
// the ClientConn every ready endpoint's address, sorted, on each change.
// With the default pick_first balancer the client uses the first one that
// answers (the same one on every node while they agree on the set) and
// moves when it stops being ready; a balancer that connects to every
// address gets them all. No ready endpoint is reported as an error: the
// client drops its connections and fails calls with "no ready aggregator
// endpoints in SERVICE.NAMESPACE" until one is ready again.
type Builder struct {
	client API
	log    *slog.Logger
}

// NewBuilder returns a Builder whose resolvers read the API through client
// and log to log.
func NewBuilder(client API, log *slog.Logger) *Builder {
	return &Builder{client: client, log: log}
}

// Scheme is "kubernetes".
func (b *Builder) Scheme() string { return Scheme }

// Build starts watching the target's EndpointSlices; the watch stops when
// gRPC closes the resolver.
func (b *Builder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	target, err := parse(t.URL.Host, t.URL.Opaque != "", t.URL.Path)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", t.URL.String(), err)
	}
	return startWatch(b.client, target, ccSink{cc}, b.log.With("target", target.String())), nil
}

// sink receives what a watch finds.
type sink interface {
	// addresses hands over the ready addresses, sorted, after a change;
	// none when no endpoint is ready, with why.
	addresses(addrs []string, noneWhy error)
	// watchFailed says the list or watch failed before any address
	// was found.
	watchFailed(err error)
}

// ccSink hands a gRPC ClientConn what the watch finds.
type ccSink struct{ cc resolver.ClientConn }

func (s ccSink) addresses(addrs []string, noneWhy error) {
	if len(addrs) == 0 {
		// An empty state makes the balancer close its connections (to
		// endpoints that are no longer ready) and fail calls; the error
		// tells them why.
		_ = s.cc.UpdateState(resolver.State{})
		s.cc.ReportError(noneWhy)
		return
	}
	var state resolver.State
	for _, a := range addrs {
		addr := resolver.Address{Addr: a}
		state.Addresses = append(state.Addresses, addr)
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{addr}})
	}
	// An error asks a polling resolver to resolve again; this one hears of
	// every change anyway.
	_ = s.cc.UpdateState(state)
}

func (s ccSink) watchFailed(err error) { s.cc.ReportError(err) }

// funcSink calls a function with every new set of addresses.
type funcSink func([]string)

func (f funcSink) addresses(addrs []string, _ error) { f(addrs) }
func (funcSink) watchFailed(error)                   {} // logged by the watch

// Watch follows the ready endpoints of target until ctx ends: it calls
// onChange with their sorted host:port addresses once the first list is
// in, and again after every change (an empty list when none is ready).
// It is the resolver's watch for a client that wants one connection per
// aggregator replica rather than one gRPC channel over all of them: the
// agent streams its reports to every replica. Calls of onChange are
// sequential. Watch returns when ctx ends and the watch has stopped.
func Watch(ctx context.Context, client API, target Target, log *slog.Logger, onChange func(addrs []string)) {
	r := startWatch(client, target, funcSink(onChange), log.With("target", target.String()))
	<-ctx.Done()
	r.Close()
}

// endpointsResolver follows one target's EndpointSlices.
type endpointsResolver struct {
	target   Target
	out      sink
	log      *slog.Logger
	informer cache.SharedIndexInformer
	selector labels.Selector
	changed  chan struct{} // a slice was added, updated or deleted
	cancel   context.CancelFunc
	done     chan struct{} // closed when run and the informer return
	once     sync.Once
	// pushed is set once the first complete list has been handed to cc.
	pushed atomic.Bool
	// last is the set handed to cc last; only run touches it.
	last []string
}

func startWatch(client API, target Target, out sink, log *slog.Logger) *endpointsResolver {
	ctx, cancel := context.WithCancel(context.Background())
	selector := labels.SelectorFromSet(labels.Set{labelServiceName: target.Service})
	// The description names the type in the reflector's errors (and so
	// in what the resolver reports) as it names k8s.io/api's.
	informer := cache.NewSharedIndexInformerWithOptions(client(target.Namespace, selector.String()),
		&EndpointSlice{}, cache.SharedIndexInformerOptions{ObjectDescription: "*v1.EndpointSlice"})
	r := &endpointsResolver{
		target:   target,
		out:      out,
		log:      log,
		informer: informer,
		selector: selector,
		changed:  make(chan struct{}, 1),
		cancel:   cancel,
		done:     make(chan struct{}),
	}
	// Neither call fails on an informer that has not started.
	_ = informer.SetWatchErrorHandlerWithContext(r.watchError)
	_, _ = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.poke() },
		UpdateFunc: func(any, any) { r.poke() },
		DeleteFunc: func(any) { r.poke() },
	})
	informerDone := make(chan struct{})
	go func() {
		defer close(informerDone)
		informer.RunWithContext(ctx)
	}()
	go func() {
		defer close(r.done)
		r.run(ctx, informer)
		<-informerDone
	}()
	log.Debug("watching EndpointSlices", "namespace", target.Namespace, "selector", selector.String())
	return r
}

func (r *endpointsResolver) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// run pushes the ready addresses once the first list is in, then after
// every change, until ctx ends.
func (r *endpointsResolver) run(ctx context.Context, informer cache.SharedIndexInformer) {
	if !cache.WaitFor(ctx, "", informer.HasSyncedChecker()) {
		return
	}
	for {
		r.update()
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		}
	}
}

// update hands cc the ready addresses, when they changed.
func (r *endpointsResolver) update() {
	// The list and watch ask for the namespace and selector already; the
	// check keeps a client that does not filter (a fake) from adding others.
	var list []*EndpointSlice
	for _, o := range r.informer.GetStore().List() {
		s, ok := o.(*EndpointSlice)
		if ok && s.Namespace == r.target.Namespace && r.selector.Matches(labels.Set(s.Labels)) {
			list = append(list, s)
		}
	}
	addrs, why := readyAddresses(list, r.target.Port)
	if r.pushed.Load() && slices.Equal(addrs, r.last) {
		return
	}
	r.last = addrs
	r.pushed.Store(true)
	if len(addrs) == 0 {
		msg := fmt.Sprintf("no ready aggregator endpoints in %s.%s", r.target.Service, r.target.Namespace)
		r.log.Warn(msg, "why", why)
		r.out.addresses(nil, fmt.Errorf("%s: %s", msg, why))
		return
	}
	r.log.Info("aggregator endpoints", "addresses", addrs)
	r.out.addresses(addrs, nil)
}

// watchError reports a failing list or watch to the client while it has no
// addresses yet; afterwards the last addresses stay in use while the API
// is unreachable, and the informer keeps retrying.
func (r *endpointsResolver) watchError(ctx context.Context, refl *cache.Reflector, err error) {
	cache.DefaultWatchErrorHandler(ctx, refl, err)
	if r.pushed.Load() {
		return
	}
	err = fmt.Errorf("EndpointSlices of Service %s/%s: %w", r.target.Namespace, r.target.Service, err)
	if apierrors.IsForbidden(err) {
		err = fmt.Errorf("%w (the agent needs list and watch on endpointslices in namespace %s)", err, r.target.Namespace)
	}
	r.log.Warn("cannot find the aggregator", "err", err)
	r.out.watchFailed(err)
}

// ResolveNow does nothing: the watch hears of every change.
func (r *endpointsResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the watch and waits for its goroutines.
func (r *endpointsResolver) Close() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
	})
}
