// Package events watches containerd's event stream (its Events gRPC
// service, through the containerd API module rather than the whole client)
// so the agent checks a new image or container within seconds instead of
// waiting for the next interval. The interval still catches everything:
// events only make rounds happen sooner.
package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// Namespace is where the CRI plugin keeps Kubernetes' images and containers.
const Namespace = "k8s.io"

// namespaceHeader is the gRPC metadata key that names a request's
// containerd namespace (containerd's namespaces.GRPCHeader).
const namespaceHeader = "containerd-namespace"

// connectTimeout bounds a connection attempt and the backoff between them,
// as containerd's client's WithTimeout does.
const connectTimeout = 5 * time.Second

// Topics that change what a node has or runs.
var filters = []string{
	`topic~="/images/"`,
	`topic=="/containers/create"`,
	`topic=="/containers/delete"`,
	`topic=="/tasks/start"`,
}

// Watcher subscribes to containerd's events: a trigger source for the
// daemon.
type Watcher struct {
	// Address is containerd's socket path or unix:// endpoint.
	Address string
	// Debounce is the least time between two triggers.
	Debounce time.Duration
	// Log is where re-subscriptions are logged (default: the context's).
	Log *slog.Logger
}

// Watch subscribes to containerd at w.Address and calls trigger after each
// burst of relevant events, at most once per w.Debounce. A broken stream
// (containerd restarted) is re-subscribed with backoff. Watch returns when
// ctx ends, or at once with an error when containerd cannot be reached.
func (w Watcher) Watch(ctx context.Context, trigger func(reason string)) error {
	address, debounce := strings.TrimPrefix(w.Address, "unix://"), w.Debounce
	conn, err := dial(address)
	if err != nil {
		return fmt.Errorf("connect to containerd at %s for events: %w", address, err)
	}
	defer func() { _ = conn.Close() }()
	client := eventsapi.NewEventsClient(conn)
	log := w.Log
	if log == nil {
		log = logging.FromContext(ctx)
	}

	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := watchOnce(ctx, client, debounce, trigger)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		log.WarnContext(ctx, "containerd event stream ended; re-subscribing", "address", address, logging.ErrKey, err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
		// What happened while we were away is unknown: check again.
		trigger("containerd event stream re-subscribed")
	}
	return nil
}

// dial makes the gRPC channel to containerd's socket the way containerd's
// client does (it connects on first use).
func dial(address string) (*grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = connectTimeout
	return grpc.NewClient("unix://"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig, MinConnectTimeout: connectTimeout}))
}

// subscribe starts one subscription to client's events that match filters:
// the envelopes arrive on the first channel until the stream ends, whose
// error (never nil) then arrives on the second.
func subscribe(ctx context.Context, client eventsapi.EventsClient, filters []string) (<-chan *types.Envelope, <-chan error) {
	envelopes, errs := make(chan *types.Envelope), make(chan error, 1)
	go func() {
		stream, err := client.Subscribe(metadata.AppendToOutgoingContext(ctx, namespaceHeader, Namespace),
			&eventsapi.SubscribeRequest{Filters: filters})
		if err != nil {
			errs <- err
			return
		}
		for {
			env, err := stream.Recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case envelopes <- env:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
	}()
	return envelopes, errs
}

func watchOnce(ctx context.Context, client eventsapi.EventsClient, debounce time.Duration, trigger func(string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	envelopes, errs := subscribe(ctx, client, filters)
	var pending string
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			if err == nil {
				return fmt.Errorf("event stream closed")
			}
			return err
		case env := <-envelopes:
			if env == nil {
				continue
			}
			if env.Namespace != Namespace {
				continue
			}
			if pending == "" {
				pending = "containerd event " + env.Topic
				timer = time.After(debounce)
			}
		case <-timer:
			trigger(pending)
			pending, timer = "", nil
		}
	}
}
