// Package cri talks to the node's container runtime over the Container
// Runtime Interface (k8s.io/cri-api runtime v1): which runtime it is, which
// images it has, and which containers use them.
package cri

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/pkg/logging"
)

// maxMsgSize matches crictl: image and container lists on a busy node
// exceed gRPC's 4 MiB default.
const maxMsgSize = 16 << 20

// Client is a connection to one CRI endpoint.
type Client struct {
	conn     *grpc.ClientConn
	runtime  runtimeapi.RuntimeServiceClient
	images   runtimeapi.ImageServiceClient
	endpoint string
	timeout  time.Duration
}

// Runtime identifies the container runtime behind the endpoint.
type Runtime struct {
	Name       string
	Version    string
	APIVersion string
	Endpoint   string
}

// DialError is returned when no endpoint answered; it names every endpoint
// tried and why it failed.
type DialError struct {
	Tried []string
	Errs  []error
}

func (e *DialError) Error() string {
	var b strings.Builder
	b.WriteString("no CRI endpoint answered; tried:")
	for i, ep := range e.Tried {
		msg := e.Errs[i].Error()
		if st, ok := status.FromError(errors.Unwrap(e.Errs[i])); ok {
			msg = st.Message()
		}
		fmt.Fprintf(&b, "\n  %s: %s", ep, msg)
	}
	b.WriteString("\nset --cri-endpoint (env PULLWATCH_CRI_ENDPOINT) to the runtime's socket, e.g. unix:///run/containerd/containerd.sock")
	return b.String()
}

func (e *DialError) Unwrap() []error { return e.Errs }

// Dial connects to the first endpoint that answers CRI Version, in order.
// callTimeout bounds each CRI call.
func Dial(ctx context.Context, endpoints []string, callTimeout time.Duration) (*Client, error) {
	derr := &DialError{}
	for _, ep := range endpoints {
		c, err := dialOne(ctx, ep, callTimeout)
		if err == nil {
			return c, nil
		}
		derr.Tried = append(derr.Tried, ep)
		derr.Errs = append(derr.Errs, err)
		logging.FromContext(ctx).DebugContext(ctx, "CRI endpoint did not answer", "endpoint", ep, logging.ErrKey, err)
	}
	return nil, derr
}

func dialOne(ctx context.Context, endpoint string, callTimeout time.Duration) (*Client, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	// passthrough + a unix dialer, as cri-tools does: the default dns
	// resolver would try to resolve the socket path.
	conn, err := grpc.NewClient("passthrough:///"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to CRI endpoint %s: %w", endpoint, err)
	}
	c := &Client{
		conn:     conn,
		runtime:  runtimeapi.NewRuntimeServiceClient(conn),
		images:   runtimeapi.NewImageServiceClient(conn),
		endpoint: endpoint,
		timeout:  callTimeout,
	}
	if _, err := c.Version(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

func socketPath(endpoint string) (string, error) {
	switch {
	case strings.HasPrefix(endpoint, "unix://"):
		return strings.TrimPrefix(endpoint, "unix://"), nil
	case strings.HasPrefix(endpoint, "/"):
		return endpoint, nil
	default:
		return "", fmt.Errorf("CRI endpoint %q: only unix sockets are supported (unix:///path or /path)", endpoint)
	}
}

// Endpoint is the endpoint this client is connected to.
func (c *Client) Endpoint() string { return c.endpoint }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Version asks the runtime who it is.
func (c *Client) Version(ctx context.Context) (Runtime, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, err := c.runtime.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return Runtime{}, fmt.Errorf("CRI Version on %s: %w", c.endpoint, err)
	}
	return Runtime{Name: v.RuntimeName, Version: v.RuntimeVersion, APIVersion: v.RuntimeApiVersion, Endpoint: c.endpoint}, nil
}

// Inventory reads the runtime's images, containers (every state) and pod
// sandboxes in one pass.
func (c *Client) Inventory(ctx context.Context) (*Inventory, error) {
	rt, err := c.Version(ctx)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{Runtime: rt, Sandboxes: map[string]Sandbox{}}

	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	imgs, err := c.images.ListImages(callCtx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListImages on %s: %w", c.endpoint, err)
	}
	for _, im := range imgs.GetImages() {
		inv.Images = append(inv.Images, Image{
			ID:          im.GetId(),
			RepoTags:    im.GetRepoTags(),
			RepoDigests: im.GetRepoDigests(),
			Pinned:      im.GetPinned(),
		})
	}

	// No filter: exited, created and init containers count too, since the
	// kubelet pulls their images again on the next restart.
	ctrs, err := c.runtime.ListContainers(callCtx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListContainers on %s: %w", c.endpoint, err)
	}
	for _, ct := range ctrs.GetContainers() {
		inv.Containers = append(inv.Containers, Container{
			ID:                 ct.GetId(),
			Name:               ct.GetMetadata().GetName(),
			PodSandboxID:       ct.GetPodSandboxId(),
			Image:              ct.GetImage().GetImage(),
			UserSpecifiedImage: ct.GetImage().GetUserSpecifiedImage(),
			ImageRef:           ct.GetImageRef(),
			ImageID:            ct.GetImageId(),
			State:              stateWord(ct.GetState()),
			Labels:             ct.GetLabels(),
		})
	}

	pods, err := c.runtime.ListPodSandbox(callCtx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListPodSandbox on %s: %w", c.endpoint, err)
	}
	for _, p := range pods.GetItems() {
		md := p.GetMetadata()
		inv.Sandboxes[p.GetId()] = Sandbox{ID: p.GetId(), Name: md.GetName(), Namespace: md.GetNamespace(), UID: md.GetUid()}
	}
	return inv, nil
}

func stateWord(s runtimeapi.ContainerState) string {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return "created"
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return "running"
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return "exited"
	default:
		return "unknown"
	}
}

// IsDialError reports whether err means no CRI endpoint could be reached.
func IsDialError(err error) bool {
	var d *DialError
	return errors.As(err, &d)
}
