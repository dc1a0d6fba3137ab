package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

// An agent run on a configuration directory: an API change reaches the
// traffic and rewrites that farm's file, and nothing else on disk.
func TestConfigDirectory(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	dir := filepath.Join(t.TempDir(), "l4nft.d")
	fd := filepath.Join(dir, config.FarmsDir)
	if err := os.MkdirAll(fd, 0o755); err != nil {
		t.Fatal(err)
	}
	fc := defaultFarm(topo)
	// The template's farm, as a farm file: its list item, dedented.
	text := fc.text(t)
	item := text[strings.Index(text, "  - name: web"):]
	var web strings.Builder
	for i, line := range strings.SplitAfter(item, "\n") {
		if i == 0 {
			line = strings.TrimPrefix(line, "  - ")
		} else {
			line = strings.TrimPrefix(line, "    ")
		}
		web.WriteString(line)
	}
	other := strings.Replace(web.String(), "name: web", "name: other", 1)
	other = strings.Replace(other, vip.String(), vip2.String(), 1)
	files := map[string]string{
		config.MainFile:      "# options and api only\ntable: l4nft\n",
		"farms.d/web.yaml":   web.String(),
		"farms.d/other.yaml": other,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	a := mustStartAgent(t, topo, dir)
	checkSplit(t, spread(t, topo, vip, 300).Counts, 1.0/3)

	before := readAll(t, dir)
	drain := lb.Drain
	if _, err := a.client.SetBackend(context.Background(), "web", "backend0", daemon.BackendChange{State: &drain}); err != nil {
		t.Fatalf("failed to drain backend0: %v", err)
	}
	if r := spread(t, topo, vip, 50); r.Counts["backend1"] != 50 {
		t.Errorf("with backend0 drained through the API: %v (%v), want all 50 on backend1", r, r.Err)
	}
	checkSplit(t, spread(t, topo, vip2, 300).Counts, 1.0/3) // the other farm is as it was
	after := readAll(t, dir)
	var changed []string
	for name, content := range after {
		if !bytes.Equal(before[name], content) {
			changed = append(changed, name)
		}
	}
	if len(changed) != 1 || changed[0] != "farms.d/web.yaml" || len(after) != len(before) {
		t.Errorf("files changed by the API: %v (%d files before, %d after); want only farms.d/web.yaml", changed, len(before), len(after))
	}
	f, err := config.ParseFarmFile(filepath.Join(fd, "web.yaml"), after["farms.d/web.yaml"])
	if err != nil || f.Backends[0].State != lb.Drain {
		t.Errorf("persisted web.yaml: %v, backend0 %+v", err, f.Backends)
	}
	if fi, err := os.Stat(filepath.Join(fd, "web.yaml")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("web.yaml mode after the change: %v, %v; want 0640", fi.Mode(), err)
	}

	// An edit of one file is reloaded.
	edited := strings.Replace(other, "weight: 2", "weight: 1", 1)
	if err := os.WriteFile(filepath.Join(fd, "other.yaml"), []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	mustEventually(t, 5*time.Second, "other.yaml reloaded", func() error {
		if b, _ := backendStatus(a.status(t), "other", "backend1"); b.Weight != 1 {
			return fmt.Errorf("other/backend1 has weight %d", b.Weight)
		}
		return nil
	})
	checkSplit(t, spread(t, topo, vip2, 300).Counts, 0.5)

	// validate takes the directory too.
	if code, out := runBinary(t, 10*time.Second, "validate", dir); code != 0 || !strings.Contains(out, "valid (2 farms") {
		t.Errorf("l4nft validate %s: exit %d\n%s", dir, code, out)
	}
}

// readAll returns every file under dir, by path relative to dir.
func readAll(tb testing.TB, dir string) map[string][]byte {
	tb.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = data
		return err
	})
	if err != nil {
		tb.Fatalf("failed to read %s: %v", dir, err)
	}
	return out
}
