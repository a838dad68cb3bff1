package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullwatch/pullwatch/e2e/harness/checkout"
	"github.com/pullwatch/pullwatch/e2e/harness/kubeapi"
	"github.com/pullwatch/pullwatch/e2e/harness/proc"
)

// Kube starts a real kube-apiserver (and etcd) for the test, or skips when
// they are not built (fails with PULLWATCH_REQUIRE_REAL=1); it stops with
// the test.
func Kube(ctx context.Context, t testing.TB) *kubeapi.Cluster {
	t.Helper()
	if _, err := kubeapi.LocateBinaries(""); err != nil {
		if proc.RealRequired() || !errors.Is(err, kubeapi.ErrNoBinaries) {
			t.Fatal(err)
		}
		t.Skipf("no kube-apiserver to test against: %v", err)
	}
	c, err := kubeapi.Start(ctx, filepath.Join(t.TempDir(), "kube"), kubeapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	return c
}

// ApplyShippedRBAC creates the RBAC objects (ClusterRoles, Roles and their
// bindings) of the named files under deploy/ exactly as shipped, and
// returns a kubeconfig for the one ServiceAccount they bind, so that a test
// proves the shipped RBAC is enough (and no more is granted).
func ApplyShippedRBAC(ctx context.Context, t testing.TB, c *kubeapi.Cluster, files ...string) string {
	t.Helper()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	cs := c.Client()
	var sa *rbacv1.Subject
	bound := func(subjects []rbacv1.Subject) {
		for _, s := range subjects {
			if s.Kind != rbacv1.ServiceAccountKind || (sa != nil && *sa != s) {
				t.Fatalf("deploy/%v: want bindings to one ServiceAccount, got %+v", files, s)
			}
			sa = &s
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, "deploy", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			var head struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("deploy/%s: %v", f, err)
			}
			switch head.Kind {
			case "ClusterRole":
				var o rbacv1.ClusterRole
				if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
					_, err = cs.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
				}
			case "ClusterRoleBinding":
				var o rbacv1.ClusterRoleBinding
				if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
					bound(o.Subjects)
					_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
				}
			case "Role":
				var o rbacv1.Role
				if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
					if err = c.EnsureNamespace(ctx, o.Namespace); err == nil {
						_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
					}
				}
			case "RoleBinding":
				var o rbacv1.RoleBinding
				if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
					bound(o.Subjects)
					if err = c.EnsureNamespace(ctx, o.Namespace); err == nil {
						_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
					}
				}
			}
			if err != nil {
				t.Fatalf("deploy/%s %s: %v", f, head.Kind, err)
			}
		}
	}
	if sa == nil {
		t.Fatalf("deploy/%v: no binding to a ServiceAccount", files)
	}
	// RBAC matches a ServiceAccount subject by user name; a client
	// certificate with that name and the ServiceAccount groups is the
	// same identity.
	kc, err := c.KubeconfigFor("system:serviceaccount:"+sa.Namespace+":"+sa.Name,
		[]string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"})
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// ApplyAdmissionPolicy creates the ValidatingAdmissionPolicies and their
// bindings of file under deploy/ exactly as shipped, and returns once the
// API server enforces them: it loads a new policy a moment after its
// creation, so refused is called every half second until it returns nil
// (it sends, as a dry run, a request the policy must refuse and says
// whether it was).
func ApplyAdmissionPolicy(ctx context.Context, t testing.TB, c *kubeapi.Cluster, file string, refused func() error) {
	t.Helper()
	root, err := checkout.Root()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", file))
	if err != nil {
		t.Fatal(err)
	}
	cs := c.Client().AdmissionregistrationV1()
	policies := 0
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("deploy/%s: %v", file, err)
		}
		switch head.Kind {
		case "ValidatingAdmissionPolicy":
			var o admissionv1.ValidatingAdmissionPolicy
			if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
				_, err = cs.ValidatingAdmissionPolicies().Create(ctx, &o, metav1.CreateOptions{})
				policies++
			}
		case "ValidatingAdmissionPolicyBinding":
			var o admissionv1.ValidatingAdmissionPolicyBinding
			if err = yaml.UnmarshalStrict([]byte(doc), &o); err == nil {
				_, err = cs.ValidatingAdmissionPolicyBindings().Create(ctx, &o, metav1.CreateOptions{})
			}
		default:
			err = errors.New("not an admission policy or its binding")
		}
		if err != nil {
			t.Fatalf("deploy/%s %s: %v", file, head.Kind, err)
		}
	}
	if policies == 0 {
		t.Fatalf("deploy/%s: no ValidatingAdmissionPolicy", file)
	}
	if err := proc.Poll(ctx, time.Minute, 500*time.Millisecond, refused); err != nil {
		t.Fatalf("deploy/%s: the API server never enforced it: %v", file, err)
	}
}
