package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/integration/testbed"
)

// mustRuleset returns the ruleset of ns as nft lists it.
func mustRuleset(tb testing.TB, ns *testbed.Namespace) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		tb.Fatalf("failed to list the ruleset: %v\n%s", err, out)
	}
	return string(out)
}

// mustBareTopology is a test bed with a config file for it and no daemon.
func mustBareTopology(tb testing.TB) (*testbed.Topology, string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root (CAP_NET_ADMIN)")
	}
	topo := testbed.ForTest(tb, testbed.Options{Named: true})
	path := filepath.Join(tb.TempDir(), "l4nft.yaml")
	text := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	return topo, path
}

func TestSecondDaemonOnTheTableIsRefused(t *testing.T) {
	_, topo, path := mustDaemon(t)
	before := mustRuleset(t, topo.Balancer.Namespace)
	// A different file, which would change the kernel if it were applied.
	other := filepath.Join(t.TempDir(), "other.yaml")
	text := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	text = strings.Replace(text, "weight: 2", "weight: 7", 1)
	if err := os.WriteFile(other, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	prepared := false
	d2, err := New(context.Background(), Options{ConfigPath: other, NetNS: topo.Balancer.NetnsName(), RunDir: testRunDir,
		Prepare: func(*config.Config) error { prepared = true; return nil }})
	if err == nil {
		d2.Close(context.Background(), false)
		t.Fatal("a second daemon on the same namespace and table started")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("error %q, want ErrLocked naming the holder's pid", err)
	}
	if prepared {
		t.Error("Prepare ran although the lock is held by another daemon")
	}
	if after := mustRuleset(t, topo.Balancer.Namespace); after != before {
		t.Errorf("the refused daemon changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Its path was not touched either: path is the first daemon's file.
	_ = path
}

func TestFailedPrepareTouchesNothing(t *testing.T) {
	topo, path := mustBareTopology(t)
	stale := filepath.Join(filepath.Dir(path), ".l4nft.yaml.tmp-42")
	if err := os.WriteFile(stale, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := mustRuleset(t, topo.Balancer.Namespace)
	_, err := New(context.Background(), Options{ConfigPath: path, NetNS: topo.Balancer.NetnsName(), RunDir: testRunDir,
		Prepare: func(*config.Config) error { return errors.New("api.token_file is empty") }})
	if err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Fatalf("New: %v, want the Prepare error", err)
	}
	if after := mustRuleset(t, topo.Balancer.Namespace); after != before {
		t.Errorf("a start that failed before its first apply changed the kernel:\n%s", after)
	}
	// The lock is released: a daemon can start now.
	mustNew(t, topo, path)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale temporary file is still there: %v", err)
	}
}

func TestConfigThatIsNotARegularFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
		want error
	}{
		{"fifo", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrNotRegular},
		{"link to /dev/zero", func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}, ErrNotRegular},
		{"oversize", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("farms: []\n"+strings.Repeat("# padding\n", 200)), 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topo, good := mustBareTopology(t)
			before := mustRuleset(t, topo.Balancer.Namespace)
			path := filepath.Join(t.TempDir(), "l4nft.yaml")
			tc.make(t, path)
			done := make(chan error, 1)
			go func() {
				d, err := New(context.Background(), Options{ConfigPath: path, NetNS: topo.Balancer.NetnsName(), RunDir: testRunDir, MaxFileSize: 1024})
				if err == nil {
					d.Close(context.Background(), false)
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("start: %v, want %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("start did not return within 5s") // the goroutine stays blocked
			}
			if after := mustRuleset(t, topo.Balancer.Namespace); after != before {
				t.Errorf("a refused start changed the kernel:\n%s", after)
			}

			// A running daemon whose file is replaced by the same keeps
			// running, answers, and rejects it.
			d := mustNewMax(t, topo, good, 1024)
			if err := os.Remove(good); err != nil {
				t.Fatal(err)
			}
			tc.make(t, good)
			go func() { done <- d.Reload(context.Background()) }()
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Errorf("reload: %v, want %v", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("reload did not return within 5s")
			}
			st, err := d.Status(context.Background())
			if err != nil || st.ConfigError == nil || len(st.Farms) != 1 {
				t.Errorf("status after the rejected file: %v, %+v; want the farm in force and the file rejected", err, st.ConfigError)
			}
		})
	}
}

// mustNewMax is mustNew with a size cap.
func mustNewMax(tb testing.TB, topo *testbed.Topology, path string, max int64) *Daemon {
	tb.Helper()
	d, _ := mustNewStop(tb, topo, path, func(o *Options) { o.MaxFileSize = max }, nil)
	return d
}

func TestReadConfigFileMetaMatchesStat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l4nft.yaml")
	if err := os.WriteFile(path, []byte("farms: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link.yaml")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	f, data, err := readConfigFile(link, 1024)
	if err != nil || string(data) != "farms: []\n" {
		t.Fatalf("readConfigFile: %q, %v", data, err)
	}
	m, err := config.Stat(link)
	if err != nil || m != f.Meta {
		t.Errorf("meta %+v, config.Stat %+v (%v): a file read would look changed at every poll", f.Meta, m, err)
	}
}
