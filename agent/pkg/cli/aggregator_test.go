package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testEnv(vars map[string]string) (Env, *bytes.Buffer) {
	var stderr bytes.Buffer
	return Env{
		Stdout:   io.Discard,
		Stderr:   &stderr,
		Getenv:   func(k string) string { return vars[k] },
		Hostname: func() (string, error) { return "node-1", nil },
	}, &stderr
}

func TestRunAggregatorTargetSetupErrors(t *testing.T) {
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		t.Skip("running in a pod: the in-cluster API configuration is there")
	}
	for _, tc := range []struct {
		name, aggregator, want string
	}{
		{
			name:       "no API",
			aggregator: "kubernetes:///pullwatch-aggregator.pullwatch:grpc",
			want: "pullwatch-agent run: --aggregator kubernetes:///pullwatch-aggregator.pullwatch:grpc finds the aggregator through the Kubernetes API, which is not configured" +
				" (no Kubernetes API configuration: not in a cluster",
		},
		{
			name:       "bad target",
			aggregator: "kubernetes://pullwatch-aggregator.pullwatch:grpc",
			want:       `pullwatch-agent run: --aggregator: target "kubernetes://pullwatch-aggregator.pullwatch:grpc": unexpected authority`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, stderr := testEnv(map[string]string{"PULLWATCH_AGGREGATOR": tc.aggregator})
			code := Main(context.Background(), []string{"run"}, env)
			if code != ExitSetup {
				t.Errorf("exit %d, want %d", code, ExitSetup)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr:\n%s\nwant it to contain %q", stderr, tc.want)
			}
			if tc.name == "no API" && !strings.Contains(stderr.String(), "set --kubeconfig (env KUBECONFIG), or give --aggregator as HOST:PORT") {
				t.Errorf("stderr:\n%s\nwant the fix", stderr)
			}
		})
	}
}

func TestAggregatorReplicas(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var c common
	watch, err := c.aggregatorReplicas(log, "pullwatch-aggregator.pullwatch.svc:9400")
	if err != nil || watch != nil {
		t.Errorf("HOST:PORT: a replica watch (%v); want none: one stream through DNS", err)
	}

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = kubeconfig
	watch, err = c.aggregatorReplicas(log, "kubernetes:///pullwatch-aggregator.pullwatch:grpc")
	if err != nil || watch == nil {
		t.Fatalf("kubernetes:/// with a kubeconfig: %v; want the replica watch", err)
	}
	if watch.authority != "pullwatch-aggregator.pullwatch.svc" {
		t.Errorf("authority %q, want the Service's DNS name", watch.authority)
	}
}
