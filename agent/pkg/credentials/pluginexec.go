package credentials

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	credentialproviderv1 "k8s.io/kubelet/pkg/apis/credentialprovider/v1"

	"github.com/pullwatch/pullwatch/pkg/dockerauth"
)

// pluginResponse is a CredentialProviderResponse reduced to what is used.
type pluginResponse struct {
	cacheKeyType string
	// cacheDuration is nil when the plugin did not say.
	cacheDuration *time.Duration
	entries       []dockerauth.Entry
}

// exec runs the plugin once for image, as the kubelet's execPlugin does:
// the config's args, the inherited environment plus the config's env, the
// request on stdin, the response on stdout. Its stdout is bounded and
// never quoted in errors; its stderr is discarded (a plugin may print
// anything there, tokens included), only its size is mentioned.
func (p *plugin) exec(ctx context.Context, image string) (pluginResponse, error) {
	req, err := json.Marshal(credentialproviderv1.CredentialProviderRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: p.apiVersion, Kind: "CredentialProviderRequest"},
		Image:    image,
	})
	if err != nil {
		return pluginResponse{}, fmt.Errorf("credential provider %s: encode request: %w", p.name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.path, p.args...)
	cmd.Env = append(p.environ(), p.env...) // later entries win, as in the kubelet
	cmd.Stdin = bytes.NewReader(req)
	stdout := &boundedBuffer{max: dockerauth.MaxConfigBytes}
	stderr := &countingWriter{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A plugin's own children die with it, and a child holding the pipes
	// open cannot make Wait hang.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	err = cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case ctx.Err() != nil:
		return pluginResponse{}, fmt.Errorf("credential provider %s for %s: no answer within %s: %w", p.name, image, p.timeout, ctx.Err())
	case stdout.overflow:
		return pluginResponse{}, fmt.Errorf("credential provider %s for %s: answered more than %d bytes", p.name, image, stdout.max)
	case err != nil:
		return pluginResponse{}, fmt.Errorf("credential provider %s (%s) for %s: %w after %s (stderr: %d bytes, not shown: it may hold secrets)",
			p.name, p.path, image, describeExecError(err), took, stderr.n)
	}
	resp, err := parsePluginResponse(stdout.Bytes(), p.apiVersion)
	if err != nil {
		return pluginResponse{}, fmt.Errorf("credential provider %s for %s: %w", p.name, image, err)
	}
	p.log.DebugContext(ctx, "credential provider answered", "provider", p.name, "image", image,
		"cache_key_type", resp.cacheKeyType, "patterns", len(resp.entries), "took", took)
	return resp, nil
}

// describeExecError keeps exec errors to their kind: an exit status or
// why the binary could not start.
func describeExecError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("failed (%s)", ee.ProcessState.String())
	}
	return err
}

// parsePluginResponse decodes a CredentialProviderResponse as the kubelet
// does: the apiVersion must be the one the request was sent with, the kind
// CredentialProviderResponse, no unknown fields, a known cacheKeyType.
// Errors never quote the response: it holds credentials.
func parsePluginResponse(data []byte, apiVersion string) (pluginResponse, error) {
	if len(data) > dockerauth.MaxConfigBytes {
		return pluginResponse{}, fmt.Errorf("response larger than %d bytes", dockerauth.MaxConfigBytes)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(data, &tm); err != nil {
		return pluginResponse{}, fmt.Errorf("response is %w", dockerauth.DescribeJSONError(err))
	}
	if tm.APIVersion != apiVersion {
		return pluginResponse{}, fmt.Errorf("response apiVersion %q, want %q (the provider's apiVersion)", tm.APIVersion, apiVersion)
	}
	if tm.Kind != "CredentialProviderResponse" {
		return pluginResponse{}, fmt.Errorf("response kind %q, want CredentialProviderResponse", tm.Kind)
	}
	var r credentialproviderv1.CredentialProviderResponse
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		// Not wrapped: a decoding error may quote a value.
		return pluginResponse{}, errors.New("response is not a valid CredentialProviderResponse")
	}
	out := pluginResponse{cacheKeyType: string(r.CacheKeyType)}
	switch r.CacheKeyType {
	case credentialproviderv1.ImagePluginCacheKeyType, credentialproviderv1.RegistryPluginCacheKeyType, credentialproviderv1.GlobalPluginCacheKeyType:
	default:
		return pluginResponse{}, fmt.Errorf("response cacheKeyType %q: want Image, Registry or Global", r.CacheKeyType)
	}
	if r.CacheDuration != nil {
		d := r.CacheDuration.Duration
		out.cacheDuration = &d
	}
	patterns := make([]string, 0, len(r.Auth))
	for k := range r.Auth {
		patterns = append(patterns, k)
	}
	sort.Strings(patterns)
	for _, k := range patterns {
		a := r.Auth[k]
		if a.Username == "" && a.Password == "" {
			continue // an empty credential pulls anonymously: none at all
		}
		out.entries = append(out.entries, dockerauth.Entry{Key: k, Credential: dockerauth.Credential{Username: a.Username, Password: a.Password}})
	}
	return out, nil
}

// boundedBuffer keeps at most max bytes; past that, writes fail, which
// closes the plugin's stdout pipe. (Not an embedded bytes.Buffer: io.Copy
// would use its ReadFrom and bypass the bound.)
type boundedBuffer struct {
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.max {
		b.overflow = true
		return 0, errors.New("output too large")
	}
	return b.buf.Write(p)
}

func (b *boundedBuffer) Bytes() []byte { return b.buf.Bytes() }

// countingWriter discards what it is given and counts it.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

var _ io.Writer = (*countingWriter)(nil)
