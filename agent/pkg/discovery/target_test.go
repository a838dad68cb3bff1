package discovery

import (
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
	}{
		{"kubernetes:///pullwatch-aggregator.pullwatch:grpc", Target{"pullwatch-aggregator", "pullwatch", "grpc"}},
		{"kubernetes:///svc.ns:9400", Target{"svc", "ns", "9400"}},
		// A DNS name of the Service with kubernetes:/// in front.
		{"kubernetes:///pullwatch-aggregator.pullwatch.svc:9400", Target{"pullwatch-aggregator", "pullwatch", "9400"}},
		{"kubernetes:///svc.ns.svc.cluster.local:grpc", Target{"svc", "ns", "grpc"}},
		{"KUBERNETES:///svc.ns:grpc", Target{"svc", "ns", "grpc"}},
	} {
		got, err := ParseTarget(tc.in)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseTarget(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if !IsTarget(tc.in) {
			t.Errorf("IsTarget(%q) = false", tc.in)
		}
	}
}

func TestParseTargetErrors(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"kubernetes://svc.ns:grpc", `unexpected authority "svc.ns:grpc": want kubernetes:///SERVICE.NAMESPACE:PORT (three slashes`},
		{"kubernetes:svc.ns:grpc", "(three slashes after kubernetes:)"},
		{"kubernetes:///", "no service: want kubernetes:///SERVICE.NAMESPACE:PORT"},
		{"kubernetes:///svc.ns", `no port in "svc.ns": want kubernetes:///SERVICE.NAMESPACE:PORT, PORT a Service port's name or a port number`},
		{"kubernetes:///svc:grpc", `"svc" is not SERVICE.NAMESPACE`},
		{"kubernetes:///svc.ns.cluster.local:grpc", `"svc.ns.cluster.local" is not SERVICE.NAMESPACE`},
		{"kubernetes:///Svc.ns:grpc", `service name "Svc"`},
		{"kubernetes:///svc.n_s:grpc", `namespace "n_s"`},
		{"kubernetes:///svc.ns:", `port "" is neither a number nor a port name`},
		{"kubernetes:///svc.ns:0", "port 0: not in 1-65535"},
		{"kubernetes:///svc.ns:65536", "port 65536: not in 1-65535"},
		{"kubernetes:///svc.ns:grpc_port", `port "grpc_port" is neither a number nor a port name`},
		{"kubernetes:///[::1]:grpc", `"::1" is not SERVICE.NAMESPACE`},
		{"dns:///svc.ns:9400", "scheme is not kubernetes"},
	} {
		_, err := ParseTarget(tc.in)
		if err == nil {
			t.Errorf("ParseTarget(%q): no error, want %q", tc.in, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseTarget(%q): %v, want it to name the target and say %q", tc.in, err, tc.want)
		}
	}
}

func TestIsTarget(t *testing.T) {
	for in, want := range map[string]bool{
		"kubernetes:///svc.ns:grpc":               true,
		"kubernetes://svc.ns:grpc":                true, // for ParseTarget to explain
		"pullwatch-aggregator.pullwatch.svc:9400": false,
		"10.0.0.1:9400":                           false,
		"[fd00::1]:9400":                          false,
		"dns:///aggregator:9400":                  false,
		"kubernetes.default.svc:443":              false,
	} {
		if got := IsTarget(in); got != want {
			t.Errorf("IsTarget(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestTargetString(t *testing.T) {
	in := "kubernetes:///svc.ns.svc.cluster.local:grpc"
	tg, err := ParseTarget(in)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tg.String(), "kubernetes:///svc.ns:grpc"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
