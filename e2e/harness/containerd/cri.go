package containerd

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// The labels the kubelet puts on pod sandboxes and containers.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
)

// PodSpec is a host-network pod as the kubelet would run it.
type PodSpec struct {
	Namespace string
	Name      string
	// UID defaults to a random UUID.
	UID string
	// Containers run in order: every Init container is created, started
	// and waited for (it must exit 0) before the regular ones start.
	Containers []ContainerSpec
}

// ContainerSpec is one container of a PodSpec.
type ContainerSpec struct {
	Name string
	// Image is the reference as written in a pod spec; it must already be
	// pulled (PullImage). The container is created kubelet-style with
	// ImageSpec.Image = the image id and UserSpecifiedImage = Image.
	Image string
	Init  bool
	// Command and Args override the image's entrypoint and cmd.
	Command []string
	Args    []string
}

// PullImage pulls ref through CRI (auth may be nil) and returns the image
// reference containerd reports (the image id, "sha256:…").
func (c *Containerd) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	resp, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth})
	if err != nil {
		return "", fmt.Errorf("CRI PullImage %s: %w", ref, err)
	}
	return resp.ImageRef, nil
}

// ImageID returns the CRI image id ("sha256:…" config digest) of a local
// image, or "" if ref is not present.
func (c *Containerd) ImageID(ctx context.Context, ref string) (string, error) {
	resp, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return "", fmt.Errorf("CRI ImageStatus %s: %w", ref, err)
	}
	if resp.Image == nil {
		return "", nil
	}
	return resp.Image.Id, nil
}

// RunPod runs spec as a host-network pod (network namespace NODE for the
// sandbox and every container, no hostname) with the kubelet's labels and
// returns the pod sandbox id. If anything fails the pod is removed again.
func (c *Containerd) RunPod(ctx context.Context, spec PodSpec) (string, error) {
	if spec.Namespace == "" || spec.Name == "" {
		return "", errors.New("RunPod: Namespace and Name are required")
	}
	if spec.UID == "" {
		spec.UID = newUID()
	}
	// Resolve images first: like the kubelet, create containers by image id.
	ids := make([]string, len(spec.Containers))
	for i, ct := range spec.Containers {
		id, err := c.ImageID(ctx, ct.Image)
		if err != nil {
			return "", err
		}
		if id == "" {
			return "", fmt.Errorf("RunPod %s/%s: image %s of container %s is not present (PullImage it first)", spec.Namespace, spec.Name, ct.Image, ct.Name)
		}
		ids[i] = id
	}

	logDir := filepath.Join(c.dir, "pods", spec.Namespace+"_"+spec.Name+"_"+spec.UID)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", err
	}
	podLabels := map[string]string{
		LabelPodName:      spec.Name,
		LabelPodNamespace: spec.Namespace,
		LabelPodUID:       spec.UID,
	}
	sandboxConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: spec.Name, Namespace: spec.Namespace, Uid: spec.UID},
		LogDirectory: logDir,
		Labels:       podLabels,
		Annotations:  map[string]string{"kubernetes.io/config.source": "api"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_NODE,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
	run, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandboxConfig})
	if err != nil {
		return "", fmt.Errorf("CRI RunPodSandbox %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	sandboxID := run.PodSandboxId
	fail := func(err error) (string, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = c.RemovePod(cctx, sandboxID)
		return "", fmt.Errorf("RunPod %s/%s: %w", spec.Namespace, spec.Name, err)
	}

	// Init containers in order, each to completion; then the regular ones.
	for _, wantInit := range []bool{true, false} {
		for i, ct := range spec.Containers {
			if ct.Init != wantInit {
				continue
			}
			labels := map[string]string{LabelContainerName: ct.Name}
			for k, v := range podLabels {
				labels[k] = v
			}
			cfg := &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: ct.Name},
				Image:    &runtimeapi.ImageSpec{Image: ids[i], UserSpecifiedImage: ct.Image},
				Command:  ct.Command,
				Args:     ct.Args,
				Labels:   labels,
				Annotations: map[string]string{
					"io.kubernetes.container.restartCount":             "0",
					"io.kubernetes.container.terminationMessagePath":   "/dev/termination-log",
					"io.kubernetes.container.terminationMessagePolicy": "File",
				},
				LogPath: filepath.Join(ct.Name, "0.log"),
				Linux: &runtimeapi.LinuxContainerConfig{
					SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
						NamespaceOptions: &runtimeapi.NamespaceOption{
							Network: runtimeapi.NamespaceMode_NODE,
							Pid:     runtimeapi.NamespaceMode_CONTAINER,
							Ipc:     runtimeapi.NamespaceMode_POD,
						},
					},
				},
			}
			created, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandboxID, Config: cfg, SandboxConfig: sandboxConfig})
			if err != nil {
				return fail(fmt.Errorf("CRI CreateContainer %s: %w", ct.Name, err))
			}
			if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
				return fail(fmt.Errorf("CRI StartContainer %s: %w", ct.Name, err))
			}
			if ct.Init {
				if err := c.waitExited(ctx, created.ContainerId, ct.Name, filepath.Join(logDir, cfg.LogPath)); err != nil {
					return fail(err)
				}
			}
		}
	}
	return sandboxID, nil
}

// waitExited waits (up to 60s) for an init container to exit with status 0.
func (c *Containerd) waitExited(ctx context.Context, id, name, logPath string) error {
	var st *runtimeapi.ContainerStatus
	err := proc.Poll(ctx, 60*time.Second, 100*time.Millisecond, func() error {
		resp, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return err
		}
		st = resp.Status
		if st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
			return fmt.Errorf("init container %s is %v", name, st.State)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if st.ExitCode != 0 {
		return fmt.Errorf("init container %s exited %d (%s %s)\n--- %s ---\n%s", name, st.ExitCode, st.Reason, st.Message, logPath, proc.LogTail(logPath, 20))
	}
	return nil
}

// RemovePod stops the pod sandbox (killing its containers) and removes it
// with its containers.
func (c *Containerd) RemovePod(ctx context.Context, sandboxID string) error {
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandboxID}); err != nil {
		return fmt.Errorf("CRI StopPodSandbox %s: %w", sandboxID, err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandboxID}); err != nil {
		return fmt.Errorf("CRI RemovePodSandbox %s: %w", sandboxID, err)
	}
	return nil
}

// RemoveAllPods removes every pod sandbox containerd knows.
func (c *Containerd) RemoveAllPods(ctx context.Context) error {
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("CRI ListPodSandbox: %w", err)
	}
	var errs []error
	for _, sb := range resp.Items {
		if err := c.RemovePod(ctx, sb.Id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ContainerPid returns the host pid of a running container's process
// (from verbose ContainerStatus), 0 if it is not running.
func (c *Containerd) ContainerPid(ctx context.Context, containerID string) (int, error) {
	resp, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: containerID, Verbose: true})
	if err != nil {
		return 0, err
	}
	raw, ok := resp.Info["info"]
	if !ok {
		return 0, errors.New("ContainerStatus: no verbose info")
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		return 0, fmt.Errorf("ContainerStatus info: %w", err)
	}
	return info.Pid, nil
}

func newUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
