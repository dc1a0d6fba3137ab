package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

const farmText = `address: %s
ports: ["80"]
backends:
  - {name: backend0, address: %s, port: 80, weight: 1}
  - {name: backend1, address: %s, port: 80, weight: 2}
`

// mustDirDaemon starts a daemon on a configuration directory of three
// farms, web, api and db.
func mustDirDaemon(tb testing.TB) (*Daemon, string) {
	tb.Helper()
	return mustDirDaemonWith(tb, nil)
}

// mustDirDaemonWith is mustDirDaemon with its options edited.
func mustDirDaemonWith(tb testing.TB, edit func(*Options)) (*Daemon, string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root (CAP_NET_ADMIN)")
	}
	topo := testbed.ForTest(tb, testbed.Options{Named: true})
	dir := tb.TempDir()
	fd := filepath.Join(dir, config.FarmsDir)
	if err := os.Mkdir(fd, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, config.MainFile), []byte("table: l4nft\n"), 0o640); err != nil {
		tb.Fatal(err)
	}
	for i, name := range []string{"web", "api", "db"} {
		text := fmt.Sprintf(farmText, fmt.Sprintf("198.51.100.%d", 250+i), topo.Backends[0].Addr4, topo.Backends[1].Addr4)
		if err := os.WriteFile(filepath.Join(fd, name+".yaml"), []byte(text), 0o640); err != nil {
			tb.Fatal(err)
		}
	}
	// A write interrupted by a crash.
	if err := os.WriteFile(filepath.Join(fd, ".web.yaml.tmp-1234"), []byte("half"), 0o600); err != nil {
		tb.Fatal(err)
	}
	d, _ := mustNewStop(tb, topo, dir, edit, nil)
	return d, dir
}

// snapshot returns the meta of every file under dir.
func snapshot(tb testing.TB, dir string) map[string]config.FileMeta {
	tb.Helper()
	out := map[string]config.FileMeta{}
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		m, err := config.Stat(p)
		out[strings.TrimPrefix(p, dir+"/")] = m
		return err
	})
	if err != nil {
		tb.Fatalf("failed to list %s: %v", dir, err)
	}
	return out
}

func changedFiles(before, after map[string]config.FileMeta) []string {
	var out []string
	for p, m := range after {
		if b, ok := before[p]; !ok || b != m {
			out = append(out, p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			out = append(out, p+" (removed)")
		}
	}
	return out
}

func TestDirectoryAPIChangeRewritesOneFile(t *testing.T) {
	d, dir := mustDirDaemon(t)
	ctx := context.Background()
	before := snapshot(t, dir)
	if _, ok := before["farms.d/.web.yaml.tmp-1234"]; ok {
		t.Errorf("the stale temporary file was not removed at start")
	}
	w := 7
	if _, err := d.SetBackend(ctx, "api", "backend0", BackendChange{Weight: &w}); err != nil {
		t.Fatalf("failed to set the weight: %v", err)
	}
	after := snapshot(t, dir)
	if got := changedFiles(before, after); len(got) != 1 || got[0] != "farms.d/api.yaml" {
		t.Errorf("files changed by one API change: %v, want only farms.d/api.yaml", got)
	}
	c, err := config.Load(dir)
	if err != nil {
		t.Fatalf("failed to load the directory after the change: %v", err)
	}
	if f, _ := c.Farm("api"); f.Backends[0].Weight != 7 {
		t.Errorf("persisted api backend0 %+v, want weight 7", f.Backends[0])
	}
	fi, err := os.Stat(filepath.Join(dir, "farms.d/api.yaml"))
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode after rewrite: %v, %v; want 0640", fi.Mode(), err)
	}

	// Create and delete: one file each.
	f, _ := d.Farm("web")
	f.Name, f.Address = "new", netip.MustParseAddr("198.51.100.240")
	if err := d.CreateFarm(ctx, f); err != nil {
		t.Fatalf("failed to create a farm: %v", err)
	}
	if err := d.DeleteFarm(ctx, "db"); err != nil {
		t.Fatalf("failed to delete a farm: %v", err)
	}
	got := changedFiles(after, snapshot(t, dir))
	if strings.Join(slices.Sorted(slices.Values(got)), ",") != "farms.d/db.yaml (removed),farms.d/new.yaml" {
		t.Errorf("files changed by create and delete: %v", got)
	}
	if c, err := config.Load(dir); err != nil || len(c.Farms) != 3 {
		t.Errorf("directory after create and delete: %v, %+v", err, c)
	}
	// A farm that conflicts with another is refused by the library, with
	// the line in its own source.
	f.Name = "clash"
	f.Address = netip.MustParseAddr("198.51.100.250")
	f.SetSource("request body")
	if err := d.CreateFarm(ctx, f); err == nil || !strings.Contains(err.Error(), "already served by farm") {
		t.Errorf("conflicting farm: %v, want a conflict with web", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "farms.d/clash.yaml")); err == nil {
		t.Errorf("the refused farm was written")
	}
}

func TestDirectoryReloadReadsOnlyChangedFiles(t *testing.T) {
	d, dir := mustDirDaemon(t)
	ctx := context.Background()
	st0, _ := d.Status(ctx)

	// Touching a file without changing it applies nothing.
	touch(t, filepath.Join(dir, "farms.d/web.yaml"))
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("failed to reload: %v", err)
	}
	if st, _ := d.Status(ctx); st.Reloads != st0.Reloads {
		t.Errorf("a touched file was reloaded: %d reloads, want %d", st.Reloads, st0.Reloads)
	}

	// One changed file: one reload, one farm applied, the others' objects
	// untouched.
	webBefore, dbBefore := farmObject(d, "web"), farmObject(d, "db")
	p := filepath.Join(dir, "farms.d/api.yaml")
	data, _ := os.ReadFile(p)
	if err := os.WriteFile(p, []byte(strings.Replace(string(data), "weight: 2", "weight: 5", 1)), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("failed to reload: %v", err)
	}
	st, _ := d.Status(ctx)
	if st.Reloads != st0.Reloads+1 || st.LastApply.Reason != "reload" || !st.LastApply.Changed || st.LastApply.Rebuilt {
		t.Errorf("after editing api.yaml: %d reloads, last apply %+v", st.Reloads, st.LastApply)
	}
	if farmObject(d, "web") != webBefore || farmObject(d, "db") != dbBefore {
		t.Errorf("farms whose files did not change were re-parsed")
	}
	if f, _ := d.Farm("api"); f.Backends[1].Weight != 5 {
		t.Errorf("api backend1 %+v, want weight 5", f.Backends[1])
	}

	// A broken file is rejected alone; the rest keeps running, and a
	// change to another farm through the API still works.
	if err := os.WriteFile(filepath.Join(dir, "farms.d/db.yaml"), []byte("address: [\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err == nil {
		t.Errorf("a broken farm file was accepted")
	}
	down := lb.Down
	if _, err := d.SetBackend(ctx, "web", "backend0", BackendChange{State: &down}); err != nil {
		t.Errorf("change to web while db.yaml is broken: %v", err)
	}
	if _, err := d.SetBackend(ctx, "db", "backend0", BackendChange{State: &down}); err == nil {
		t.Errorf("change to db over its broken file was accepted")
	}
	// Removing the file removes the farm.
	if err := os.Remove(filepath.Join(dir, "farms.d/db.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("failed to reload after removing db.yaml: %v", err)
	}
	if _, err := d.Farm("db"); err == nil {
		t.Errorf("farm db still configured after its file was removed")
	}
	if st, _ := d.Status(ctx); st.ConfigError != nil || len(st.Farms) != 2 {
		t.Errorf("status after removing db.yaml: error %+v, %d farms", st.ConfigError, len(st.Farms))
	}
}

// An edit of a farm file is loaded at once through inotify, without the
// polling tick (an hour here): the agent learns which file changed instead
// of looking at every file.
func TestDirectoryEditIsSeenThroughInotify(t *testing.T) {
	d, dir := mustDirDaemonWith(t, func(o *Options) { o.WatchInterval = time.Hour })
	p := filepath.Join(dir, "farms.d/api.yaml")
	data, _ := os.ReadFile(p)
	tmp := filepath.Join(dir, "farms.d/.api.yaml.new")
	if err := os.WriteFile(tmp, []byte(strings.Replace(string(data), "weight: 2", "weight: 7", 1)), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the edit loaded", func() error {
		if f, _ := d.Farm("api"); f.Backends[1].Weight != 7 {
			return fmt.Errorf("api backend1 weight %d", f.Backends[1].Weight)
		}
		return nil
	})
	// A new farm file too, and its removal.
	web, _ := os.ReadFile(filepath.Join(dir, "farms.d/web.yaml"))
	extra := strings.Replace(string(web), "198.51.100.250", "198.51.100.240", 1)
	if err := os.WriteFile(filepath.Join(dir, "farms.d/extra.yaml"), []byte(extra), 0o640); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new farm loaded", func() error {
		_, err := d.Farm("extra")
		return err
	})
	if err := os.Remove(filepath.Join(dir, "farms.d/extra.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the farm removed", func() error {
		if _, err := d.Farm("extra"); err == nil {
			return errors.New("still there")
		}
		return nil
	})
}

// touch rewrites the file with its own content: new times, same bytes.
func touch(tb testing.TB, p string) {
	tb.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o640); err != nil {
		tb.Fatal(err)
	}
}

// farmObject returns the farm in force, as published.
func farmObject(d *Daemon, name string) *config.Farm {
	d.view.RLock()
	defer d.view.RUnlock()
	return d.index[name]
}
