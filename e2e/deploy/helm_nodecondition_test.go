package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
)

// TestHelmNodeCondition: nodeCondition.enabled renders what
// deploy/components/node-condition adds (its ClusterRole and binding, the
// aggregator's PULLWATCH_NODE_CONDITION), and the pre-delete hook that
// takes the condition off every Node on helm uninstall (e2e/installed
// runs it on real kubelets); removeOnUninstall=false leaves the hook out.
func TestHelmNodeCondition(t *testing.T) {
	out := helmTemplate(t, "--set", "nodeCondition.enabled=true")
	objs, err := decodeAll("helm template (node condition)", out)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := decodeMaps("helm template (node condition)", out)
	if err != nil {
		t.Fatal(err)
	}
	rbacFile := filepath.Join(root(t), "deploy", "components", "node-condition", "rbac.yaml")
	data, err := os.ReadFile(rbacFile)
	if err != nil {
		t.Fatal(err)
	}
	want, err := decodeMaps(rbacFile, data)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for k := range want {
		got[k] = maps[k]
	}
	compareObjects(t, want, got)

	var job *batchv1.Job
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			if got := envValue(containerNamed(t, &v.Spec.Template.Spec, "aggregator"), "PULLWATCH_NODE_CONDITION"); got != "true" {
				t.Errorf("aggregator PULLWATCH_NODE_CONDITION %q, want true", got)
			}
		case *batchv1.Job:
			job = v
		}
	}
	if job == nil {
		t.Fatal("no uninstall hook Job")
	}
	if job.Annotations["helm.sh/hook"] != "pre-delete" {
		t.Errorf("Job %s: hook %q, want pre-delete", job.Name, job.Annotations["helm.sh/hook"])
	}
	c := job.Spec.Template.Spec.Containers[0]
	if args := strings.Join(c.Args, " "); args != "remove-node-condition --stop-deployment="+namespace+"/pullwatch-aggregator --timeout=3m" {
		t.Errorf("hook Job args %q", args)
	}
	if !strings.HasPrefix(c.Image, "ghcr.io/pullwatch/pullwatch-aggregator") {
		t.Errorf("hook Job image %q, want the aggregator's", c.Image)
	}
	// Every object the hook needs is a hook itself (gone after it ran).
	for k, m := range maps {
		md, _ := m["metadata"].(map[string]any)
		if md["name"] != "pullwatch-uninstall" {
			continue
		}
		ann, _ := md["annotations"].(map[string]any)
		if ann["helm.sh/hook"] != "pre-delete" || !strings.Contains(ann["helm.sh/hook-delete-policy"].(string), "hook-succeeded") {
			t.Errorf("%s: annotations %v, want a pre-delete hook deleted once it succeeded", k, ann)
		}
	}

	if out := string(helmTemplate(t, "--set", "nodeCondition.enabled=true", "--set", "nodeCondition.removeOnUninstall=false")); strings.Contains(out, "pullwatch-uninstall") {
		t.Error("removeOnUninstall=false still renders the uninstall hook")
	}
}
