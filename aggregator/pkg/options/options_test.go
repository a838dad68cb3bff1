package options

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pullwatch/pullwatch/aggregator/pkg/shard"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParse(t *testing.T) {
	defaults := Options{
		GRPCListen:      ":9400",
		HTTPListen:      ":8080",
		StaleAfter:      3 * time.Minute,
		MaxReportBytes:  16 << 20,
		ShutdownTimeout: 10 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "text",
		NodeImageSeries: "failing",
		LendCredentials: "verified",

		NodeEndpointSeries: "failing",

		ForgetAfter:          30 * time.Minute,
		MaxNodeImages:        5000,
		MaxNodeEndpoints:     256,
		MaxNodeBytes:         4 << 20,
		MaxConcurrentStreams: 16,
		FirstReportTimeout:   time.Minute,

		AgentServiceAccount: "pullwatch/pullwatch-agent",
		AuthQPS:             20,
		AuthBurst:           40,
		ProbeReplicas:       2,

		ScrapeTokenServiceAccount: "pullwatch-metrics-scraper",
		RegistryBudgets:           shard.Budgets{"docker.io": 600},
		AgentInterval:             time.Minute,
	}
	with := func(edit func(*Options)) Options {
		o := defaults
		edit(&o)
		return o
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want Options
	}{
		{"defaults", nil, nil, defaults},
		{"flags", []string{
			"--grpc-listen=127.0.0.1:19400", "--http-listen", ":18080", "--stale-after=90s",
			"--max-report-bytes=1048576", "--shutdown-timeout=3s", "--log-level=debug", "--log-format=json",
			"--kubeconfig=/tmp/kc", "--node-image-series=all", "--compat-metrics=false", "--lend-credentials=unverified-lab",
			"--probe-replicas=3", "--registry-budget=ghcr.io=100/interval,docker.io=0", "--agent-interval=2m",
		}, nil, Options{
			ProbeReplicas: 3, RegistryBudgets: shard.Budgets{"ghcr.io": 100}, AgentInterval: 2 * time.Minute,
			GRPCListen: "127.0.0.1:19400", HTTPListen: ":18080", StaleAfter: 90 * time.Second,
			MaxReportBytes: 1 << 20, ShutdownTimeout: 3 * time.Second, LogLevel: slog.LevelDebug, LogFormat: "json",
			Kubeconfig: "/tmp/kc", NodeImageSeries: "all", NodeEndpointSeries: "failing", CompatMetrics: "off", AgentServiceAccount: "pullwatch/pullwatch-agent", LendCredentials: "unverified-lab",
			AuthQPS: 20, AuthBurst: 40, ScrapeTokenServiceAccount: "pullwatch-metrics-scraper",
			ForgetAfter: 15 * time.Minute, MaxNodeImages: 5000, MaxNodeEndpoints: 256, MaxNodeBytes: 4 << 20, MaxConcurrentStreams: 16, FirstReportTimeout: time.Minute,
		}},
		{"bounds", []string{"--forget-after=1h", "--max-node-images=10", "--max-node-endpoints=3", "--max-concurrent-streams=2", "--first-report-timeout=5s", "--max-node-bytes=65536"}, nil,
			with(func(o *Options) {
				o.ForgetAfter, o.MaxNodeImages, o.MaxNodeEndpoints, o.MaxConcurrentStreams, o.FirstReportTimeout = time.Hour, 10, 3, 2, 5*time.Second
				o.MaxNodeBytes = 65536
			})},
		{"authentication's own API client", []string{"--auth-qps=5.5", "--auth-burst=11"}, map[string]string{"PULLWATCH_AUTH_BURST": "12"},
			with(func(o *Options) { o.AuthQPS, o.AuthBurst = 5.5, 11 })},
		{"authentication's API client in environment", nil, map[string]string{"PULLWATCH_AUTH_QPS": "50", "PULLWATCH_AUTH_BURST": "100"},
			with(func(o *Options) { o.AuthQPS, o.AuthBurst = 50, 100 })},
		{"scrape audience and token", []string{"--http-token-audiences=pullwatch-metrics, other", "--scrape-token-secret=pullwatch/pullwatch-metrics-token"},
			map[string]string{"PULLWATCH_SCRAPE_TOKEN_SERVICE_ACCOUNT": "scraper"},
			with(func(o *Options) {
				o.HTTPTokenAudiences, o.ScrapeTokenSecret, o.ScrapeTokenServiceAccount = []string{"pullwatch-metrics", "other"}, "pullwatch/pullwatch-metrics-token", "scraper"
			})},
		{"byte budget in environment", nil, map[string]string{"PULLWATCH_MAX_NODE_BYTES": "1048576"},
			with(func(o *Options) { o.MaxNodeBytes = 1 << 20 })},
		{"security", []string{"--auth=kubernetes", "--http-auth=none", "--agent-service-account=ops/agent", "--tls-dir=/tls"}, nil,
			with(func(o *Options) {
				o.Auth, o.HTTPAuth, o.AgentServiceAccount, o.TLSDir = "kubernetes", "none", "ops/agent", "/tls"
			})},
		{"security in environment", nil, map[string]string{"PULLWATCH_AUTH": "none", "PULLWATCH_INSECURE": "true", "PULLWATCH_HTTP_AUTH": "kubernetes"},
			with(func(o *Options) { o.Auth, o.Insecure, o.HTTPAuth = "none", true, "kubernetes" })},
		{"environment", nil, map[string]string{
			"PULLWATCH_GRPC_LISTEN": ":1", "PULLWATCH_STALE_AFTER": "5m", "PULLWATCH_LOG_LEVEL": "warn", "KUBECONFIG": "/a:/b",
			"PULLWATCH_NODE_IMAGE_SERIES": "all", "PULLWATCH_COMPAT_METRICS": "false", "PULLWATCH_LEND_CREDENTIALS": "off",
		}, with(func(o *Options) {
			o.GRPCListen, o.StaleAfter, o.LogLevel, o.Kubeconfig = ":1", 5*time.Minute, slog.LevelWarn, "/a:/b"
			o.ForgetAfter = 50 * time.Minute
			o.NodeImageSeries, o.CompatMetrics, o.LendCredentials = "all", "off", "off"
		})},
		{"flag wins over environment", []string{"--stale-after=1m"}, map[string]string{"PULLWATCH_STALE_AFTER": "5m"},
			with(func(o *Options) { o.StaleAfter, o.ForgetAfter = time.Minute, 10*time.Minute })},
		{"empty environment variable is unset", nil, map[string]string{"PULLWATCH_HTTP_LISTEN": ""}, defaults},
		{"compat schemas, filters, node condition", []string{"--compat-metrics=both", `--ignored-images=^quay\.io/~:latest$`, "--node-condition"},
			map[string]string{"PULLWATCH_ALLOWED_IMAGES": "example", "PULLWATCH_NAMESPACE_LABEL": "team=a"}, func() Options {
				o := defaults
				o.CompatMetrics, o.NodeCondition = "both", true
				o.IgnoredImages, o.AllowedImages, o.NamespaceLabel = []string{`^quay\.io/`, ":latest$"}, []string{"example"}, "team=a"
				return o
			}()},
		{"bare --compat-metrics is current", []string{"--compat-metrics"}, nil, with(func(o *Options) { o.CompatMetrics = "current" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.args, envOf(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("Parse = %+v\nwant    %+v", *got, tt.want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr []string // substrings: the flag or variable, and the fix
	}{
		{"bad duration", []string{"--stale-after=soon"}, nil, []string{"-stale-after", "want a positive duration"}},
		{"zero duration", []string{"--stale-after=0s"}, nil, []string{"-stale-after", "want a positive duration"}},
		{"bad duration in environment", nil, map[string]string{"PULLWATCH_STALE_AFTER": "soon"},
			[]string{"PULLWATCH_STALE_AFTER", "--stale-after", "want a positive duration"}},
		{"listen without port", []string{"--grpc-listen=localhost"}, nil, []string{"-grpc-listen", "want host:port"}},
		{"bytes not a number", []string{"--max-report-bytes=16MiB"}, nil, []string{"-max-report-bytes", "want a whole number from 1024 to 1073741824"}},
		{"bytes too small", []string{"--max-report-bytes=10"}, nil, []string{"-max-report-bytes", "want a whole number from 1024 to 1073741824"}},
		{"bad log level", []string{"--log-level=loud"}, nil, []string{"-log-level", "want debug, info, warn or error"}},
		{"bad log format", nil, map[string]string{"PULLWATCH_LOG_FORMAT": "xml"}, []string{"PULLWATCH_LOG_FORMAT", "want text or json"}},
		{"unknown flag", []string{"--nope"}, nil, []string{"-nope"}},
		{"bad node image series", []string{"--node-image-series=some"}, nil, []string{"-node-image-series", "want all or failing"}},
		{"bad image regexp", []string{"--ignored-images=a~("}, nil, []string{"--ignored-images"}},
		{"bad namespace selector", []string{"--namespace-label=a b c"}, nil, []string{"--namespace-label"}},
		{"bad compat switch", nil, map[string]string{"PULLWATCH_COMPAT_METRICS": "maybe"}, []string{"PULLWATCH_COMPAT_METRICS", "--compat-metrics"}},
		{"forget before stale", []string{"--stale-after=5m", "--forget-after=5m"}, nil, []string{"--forget-after", "longer than --stale-after"}},
		{"bad auth", []string{"--auth=off"}, nil, []string{"-auth", "want kubernetes or none"}},
		{"bad agent account", []string{"--agent-service-account=pullwatch-agent"}, nil, []string{"-agent-service-account", "namespace/name"}},
		{"scrape token secret not namespace/name", []string{"--http-token-audiences=a", "--scrape-token-secret=token"}, nil, []string{"--scrape-token-secret", "namespace/name"}},
		{"scrape token without an audience", nil, map[string]string{"PULLWATCH_SCRAPE_TOKEN_SECRET": "pullwatch/t"}, []string{"--scrape-token-secret", "PULLWATCH_HTTP_TOKEN_AUDIENCES"}},
		{"positional argument", []string{"serve"}, nil, []string{`"serve"`, "all settings are flags"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.args, envOf(tt.env), io.Discard)
			if err == nil {
				t.Fatal("Parse succeeded")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if _, err := Parse([]string{"--help"}, envOf(nil), &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("Parse(--help) error = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{
		"Usage: pullwatch-aggregator",
		"environment variable",
		"--grpc-listen host:port",
		"env PULLWATCH_GRPC_LISTEN, default :9400",
		"env KUBECONFIG)",
		"--stale-after duration",
		"env PULLWATCH_NODE_IMAGE_SERIES, default failing",
		"env PULLWATCH_COMPAT_METRICS)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckTransport(t *testing.T) {
	for _, tt := range []struct {
		o       Options
		wantErr string
	}{
		{Options{}, "set --tls-dir"},
		{Options{TLSDir: "/tls", Insecure: true}, "choose one"},
		{Options{TLSDir: "/tls"}, ""},
		{Options{Insecure: true}, ""},
		{Options{TLSDir: "/tls", HTTPTLS: true}, ""},
		{Options{Insecure: true, HTTPTLS: true}, "needs --tls-dir"},
	} {
		err := tt.o.CheckTransport()
		if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%+v: CheckTransport = %v, want %q", tt.o, err, tt.wantErr)
		}
	}
}

func TestResolveAuth(t *testing.T) {
	for _, tt := range []struct {
		mode    string
		api     bool
		want    string
		wantErr string
	}{
		{"", true, AuthKubernetes, ""},
		{"", false, "", "set --auth=none explicitly"},
		{AuthNone, false, AuthNone, ""},
		{AuthNone, true, AuthNone, ""},
		{AuthKubernetes, true, AuthKubernetes, ""},
		{AuthKubernetes, false, "", "needs the Kubernetes API"},
	} {
		got, err := ResolveAuth("auth", tt.mode, tt.api)
		if got != tt.want || (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ResolveAuth(%q, api %v) = %q, %v; want %q, %q", tt.mode, tt.api, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestResolveCompat(t *testing.T) {
	for _, tt := range []struct {
		schema string
		api    bool
		want   string
	}{
		{"", true, "current"},
		{"", false, "off"},
		{"current", false, "current"},
		{"both", true, "both"},
		{"off", true, "off"},
	} {
		if got := ResolveCompat(tt.schema, tt.api); got != tt.want {
			t.Errorf("ResolveCompat(%q, %v) = %q, want %q", tt.schema, tt.api, got, tt.want)
		}
	}
}
