package agent_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/api"
)

// TestDiffAndDryRun: `l4nft diff` of the file in force exits 0 and prints
// nothing; of an edited file exits 1 and shows the changed farm's
// elements; `apply --dry-run` and an API PATCH with ?dry_run=true answer
// with the plan and change neither the kernel (its listing is the same
// byte for byte) nor the file.
func TestDiffAndDryRun(t *testing.T) {
	topo, path, fc, a := mustStart(t, nil)
	ns := topo.Balancer.NetnsName()
	list := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := topo.Balancer.Command(ctx, "nft", "list", "table", "inet", "l4nft").Output()
		if err != nil {
			t.Fatalf("failed to list the table: %v", err)
		}
		return string(out)
	}
	before := list()
	fileBefore, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	if code, out := runBinary(t, 30*time.Second, "diff", path, "--netns", ns); code != 0 || out != "" {
		t.Errorf("diff of the file in force: exit %d, output %q; want 0 and nothing", code, out)
	}

	edited := filepath.Join(t.TempDir(), "edited.yaml")
	next := *fc
	next.Weight1 = 5
	mustWriteConfig(t, edited, next.text(t))
	code, out := runBinary(t, 30*time.Second, "diff", edited, "--netns", ns)
	if code != 1 || !strings.Contains(out, "# farms changed: web") || !strings.Contains(out, "# transaction 1") {
		t.Errorf("diff of an edited file: exit %d, want 1 and the changed farm's elements:\n%s", code, out)
	}

	code, dry := runBinary(t, 30*time.Second, "apply", "--dry-run", edited, "--netns", ns)
	if code != 0 || !strings.Contains(dry, "# farms changed: web") {
		t.Errorf("apply --dry-run: exit %d, want 0 and the plan:\n%s", code, dry)
	}
	if after := list(); after != before {
		t.Errorf("apply --dry-run changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if code, out := runBinary(t, 30*time.Second, "diff", edited, "--netns", ns); code != 1 {
		t.Errorf("diff after apply --dry-run: exit %d, want 1 still:\n%s", code, out)
	}

	c := unixHTTP(a.socket)
	code, body := request(t, c, "PATCH", "http://l4nft/v1/farms/web/backends/backend1?dry_run=true", "", strings.NewReader(`{"weight": 7}`))
	var plan api.PlanBody
	if err := json.Unmarshal([]byte(body), &plan); code != 200 || err != nil || !plan.DryRun || plan.Empty ||
		len(plan.Changed) != 1 || plan.Changed[0] != "web" || plan.Elements == 0 || !strings.Contains(plan.NFT, "# transaction 1") {
		t.Errorf("PATCH ?dry_run=true: %d %s (%v); want 200 and the plan changing web", code, body, err)
	}
	if after := list(); after != before {
		t.Errorf("a dry-run PATCH changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if fileAfter, err := os.ReadFile(path); err != nil || string(fileAfter) != string(fileBefore) {
		t.Errorf("a dry-run PATCH changed the file (%v):\n%s", err, fileAfter)
	}
	if f, err := a.client.Farm(context.Background(), "web"); err != nil || f.Backends[1].Weight != 2 {
		t.Errorf("after a dry-run PATCH the agent has backend1 at weight %d (%v), want 2", f.Backends[1].Weight, err)
	}
	// A refused dry run is refused as the change would be.
	if code, body := request(t, c, "PATCH", "http://l4nft/v1/farms/web/backends/backend1?dry_run=true", "", strings.NewReader(`{"weight": 0}`)); code != 400 {
		t.Errorf("dry-run PATCH of weight 0: %d %s, want 400", code, body)
	}
}
