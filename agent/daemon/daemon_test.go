package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

const configText = `farms:
  - name: web
    address: 198.51.100.250
    ports: ["80"]
    health: {type: tcp, interval: 50ms, timeout: 40ms, rise: 2, fall: 2}
    backends:
      - {name: backend0, address: %s, port: 80, weight: 1}
      - {name: backend1, address: %s, port: 80, weight: 2}
`

type recorder struct{ applies, failed, reloads int }

func (r *recorder) ObserveApply(_ lb.Result, err error) {
	r.applies++
	if err != nil {
		r.failed++
	}
}
func (r *recorder) ObserveReload(error) { r.reloads++ }

// mustDaemon starts a daemon in a new test bed's balancer namespace.
func mustDaemon(tb testing.TB) (*Daemon, *testbed.Topology, string) {
	tb.Helper()
	d, topo, path, _ := mustDaemonStop(tb)
	return d, topo, path
}

// mustDaemonStop is mustDaemon, with a function that stops the daemon.
func mustDaemonStop(tb testing.TB) (*Daemon, *testbed.Topology, string, func()) {
	tb.Helper()
	topo, path := mustBareTopology(tb)
	d, stop := mustNewStop(tb, topo, path, nil, nil)
	return d, topo, path, stop
}

func mustNew(tb testing.TB, topo *testbed.Topology, path string) *Daemon {
	tb.Helper()
	d, _ := mustNewStop(tb, topo, path, nil, nil)
	return d
}

// testRunDir holds the tests' instance locks: private, and shared by the
// daemons of one test so that they exclude each other.
var testRunDir = filepath.Join(os.TempDir(), "l4nft-daemon-test-run")

// mustNewStop starts a daemon with edit applied to its options, running
// with reload as its SIGHUP, and returns it with a function that stops it
// (also called at cleanup).
func mustNewStop(tb testing.TB, topo *testbed.Topology, path string, edit func(*Options), reload <-chan struct{}) (*Daemon, func()) {
	tb.Helper()
	opts := Options{ConfigPath: path, NetNS: topo.Balancer.NetnsName(), Observer: &recorder{},
		WatchInterval: 20 * time.Millisecond, ResyncInterval: -1, RunDir: testRunDir}
	if edit != nil {
		edit(&opts)
	}
	d, err := New(context.Background(), opts)
	if err != nil {
		tb.Fatalf("failed to start the daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		d.Run(ctx, reload)
		close(done)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			<-done
			d.Close(context.Background(), false)
		})
	}
	tb.Cleanup(stop)
	return d, stop
}

func effective(tb testing.TB, d *Daemon, name string) (lb.BackendState, bool) {
	tb.Helper()
	st, err := d.Status(context.Background())
	if err != nil {
		tb.Fatalf("failed to get the status: %v", err)
	}
	for _, b := range st.Farms[0].Backends {
		if b.Name == name {
			return b.Effective, b.Healthy()
		}
	}
	tb.Fatalf("no backend %s", name)
	return 0, false
}

func waitFor(tb testing.TB, what string, cond func() error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := testbed.Eventually(ctx, 10*time.Millisecond, func(context.Context) error { return cond() }); err != nil {
		tb.Fatalf("failed to see %s: %v", what, err)
	}
}

func TestHealthDrainsAndOperatorWins(t *testing.T) {
	d, topo, path := mustDaemon(t)
	ctx := context.Background()
	topo.Backends[0].StopServers()
	waitFor(t, "backend0 drained by health", func() error {
		if s, healthy := effective(t, d, "backend0"); s != lb.Drain || healthy {
			return fmt.Errorf("backend0 %s, healthy %v", s, healthy)
		}
		return nil
	})
	// The file still says up: health is not persisted.
	c, _ := config.Load(path)
	if f, _ := c.Farm("web"); f.Backends[0].State != lb.Up {
		t.Errorf("health changed the file: %+v", f.Backends[0])
	}
	down := lb.Down
	if _, err := d.SetBackend(ctx, "web", "backend0", BackendChange{State: &down}); err != nil {
		t.Fatalf("failed to set backend0 down: %v", err)
	}
	if err := topo.Backends[0].StartServers(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "backend0 healthy again", func() error {
		if _, healthy := effective(t, d, "backend0"); !healthy {
			return errors.New("unhealthy")
		}
		return nil
	})
	if s, _ := effective(t, d, "backend0"); s != lb.Down {
		t.Errorf("a healthy backend the operator set down is %s", s)
	}
	up := lb.Up
	if _, err := d.SetBackend(ctx, "web", "backend0", BackendChange{State: &up}); err != nil {
		t.Fatalf("failed to set backend0 up: %v", err)
	}
	if s, _ := effective(t, d, "backend0"); s != lb.Up {
		t.Errorf("backend0 is %s after the operator set it up", s)
	}
	if _, err := d.SetBackend(ctx, "web", "nope", BackendChange{State: &up}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown backend: %v, want ErrNotFound", err)
	}
}

func TestRestartKeepsHealthDrain(t *testing.T) {
	d, topo, path, stopFirst := mustDaemonStop(t)
	topo.Backends[0].StopServers()
	waitFor(t, "backend0 drained by health", func() error {
		if s, _ := effective(t, d, "backend0"); s != lb.Drain {
			return fmt.Errorf("backend0 %s", s)
		}
		return nil
	})
	// A second daemon adopting the table after a restart keeps the
	// drained backend drained and changes nothing.
	stopFirst()
	d2 := mustNew(t, topo, path)
	st, err := d2.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Changes != 0 || st.LastApply.Changed {
		t.Errorf("the adopting daemon changed the kernel: %+v", st.LastApply)
	}
	if s, healthy := effective(t, d2, "backend0"); s != lb.Drain || healthy {
		t.Errorf("after restart backend0 is %s, healthy %v; want drain, unhealthy", s, healthy)
	}
}

func TestResyncRepairsDrift(t *testing.T) {
	d, topo, _ := mustDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := topo.Balancer.Command(ctx, "nft", "delete", "table", "inet", "l4nft").CombinedOutput(); err != nil {
		t.Fatalf("failed to delete the table: %v %s", err, out)
	}
	if _, err := topo.Clients[0].Ask(ctx, "tcp4", netip.MustParseAddrPort("198.51.100.250:80")); err == nil {
		t.Fatalf("the VIP answered without a table")
	}
	if err := d.Resync(ctx); err != nil {
		t.Fatalf("failed to resync: %v", err)
	}
	st, _ := d.Status(ctx)
	if !st.LastApply.Changed || !st.LastApply.Rebuilt {
		t.Errorf("resync did not rebuild the missing table: %+v", st.LastApply)
	}
	if _, err := topo.Clients[0].Ask(ctx, "tcp4", netip.MustParseAddrPort("198.51.100.250:80")); err != nil {
		t.Errorf("the VIP does not answer after resync: %v", err)
	}
	// Resync of a matching kernel sends nothing.
	before, _ := d.Status(ctx)
	if err := d.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Status(ctx); st.Changes != before.Changes {
		t.Errorf("resync of a matching kernel changed it: %d changes, then %d", before.Changes, st.Changes)
	}
}

func TestMutationsPersistAndConflict(t *testing.T) {
	d, _, path := mustDaemon(t)
	ctx := context.Background()
	f, _ := d.Farm("web")
	f.Name, f.Address = "api", netip.MustParseAddr("198.51.100.251")
	if err := d.CreateFarm(ctx, f); err != nil {
		t.Fatalf("failed to create a farm: %v", err)
	}
	if err := d.CreateFarm(ctx, f); !errors.Is(err, ErrExists) {
		t.Errorf("creating it twice: %v, want ErrExists", err)
	}
	c, err := config.Load(path)
	if err != nil || len(c.Farms) != 2 {
		t.Fatalf("persisted file: %v, %d farms", err, len(c.Farms))
	}
	// An edit on disk not yet reloaded is loaded before a change.
	data, _ := os.ReadFile(path)
	edited := append(data, []byte("table: l4nft\n")...)
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteFarm(ctx, "api"); err != nil {
		t.Fatalf("failed to delete: %v", err)
	}
	c, _ = config.Load(path)
	if c.Table != "l4nft" || len(c.Farms) != 1 {
		t.Errorf("the change lost the edit on disk: table %q, %d farms", c.Table, len(c.Farms))
	}
	// A broken file blocks changes.
	if err := os.WriteFile(path, []byte("farms: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := 3
	if _, err := d.SetBackend(ctx, "web", "backend0", BackendChange{Weight: &w}); !errors.Is(err, ErrConflict) {
		t.Errorf("change over a broken file: %v, want ErrConflict", err)
	}
	st, _ := d.Status(ctx)
	if st.ConfigError == nil || len(st.ConfigError.Problems) != 1 {
		t.Errorf("status config error %+v, want the syntax problem", st.ConfigError)
	}
}

// A content rejected, then a good one, then the rejected one again (as an
// editor truncating the file in place may show) is rejected again, not
// mistaken for the rejection still in force.
func TestRejectedContentAgain(t *testing.T) {
	d, _, path := mustDaemon(t)
	good, _ := os.ReadFile(path)
	configErr := func(want bool) func() error {
		return func() error {
			st, err := d.Status(context.Background())
			if err != nil {
				return err
			}
			if (st.ConfigError != nil) != want {
				return fmt.Errorf("config error %+v", st.ConfigError)
			}
			return nil
		}
	}
	for i, content := range [][]byte{nil, append(good, "table: l4nft\n"...), nil, good} {
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("step %d (%d bytes)", i, len(content)), configErr(len(content) == 0))
	}
}

// The status carries a farm's scheduler options as configured and its
// live persistence entries as the library counts them.
func TestStatusCountsPersistenceEntries(t *testing.T) {
	topo, path := mustBareTopology(t)
	text := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	text = strings.Replace(text, `    ports: ["80"]`+"\n", `    ports: ["80"]`+"\n    scheduler: consistent\n    persistence: {by: src_ip, ttl: 1m}\n", 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d := mustNew(t, topo, path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := st.Farms[0]
	if f.Scheduler != lb.Consistent || f.Persistence == nil || f.Persistence.TTL != lb.Duration(time.Minute) || f.PersistenceEntries != 0 {
		t.Fatalf("status before any connection: %+v", f.FarmStatus)
	}
	for range 3 {
		if _, err := topo.Clients[0].Ask(ctx, "tcp4", netip.MustParseAddrPort("198.51.100.250:80")); err != nil {
			t.Fatalf("the VIP does not answer: %v", err)
		}
	}
	if st, err = d.Status(ctx); err != nil || st.Farms[0].PersistenceEntries != 1 {
		t.Errorf("status after 3 connections from one client: %d persistence entries (%v), want 1", st.Farms[0].PersistenceEntries, err)
	}
}

// The status carries a farm's admission options as configured and its
// rejections as the library counts them: a denied client's attempt is
// counted, by reason.
func TestStatusCountsRejections(t *testing.T) {
	topo, path := mustBareTopology(t)
	text := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	text = strings.Replace(text, `    ports: ["80"]`+"\n", `    ports: ["80"]`+"\n    deny: ["+topo.Clients[0].Addr4.String()+"]\n"+
		"    limits: {established_per_client: 100}\n    tcp_strict: true\n", 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d := mustNew(t, topo, path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := st.Farms[0]
	if len(f.Deny) != 1 || f.Limits == nil || f.Limits.EstablishedPerClient != 100 || !f.TCPStrict || f.Rejected != (lb.Rejections{}) {
		t.Fatalf("status before any connection: %+v", f.FarmStatus)
	}
	ask, stop := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = topo.Clients[0].Ask(ask, "tcp4", netip.MustParseAddrPort("198.51.100.250:80"))
	stop()
	if err == nil {
		t.Fatal("a denied client reached the VIP")
	}
	if st, err = d.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if r := st.Farms[0].Rejected; r.Denied == 0 || r.NotAllowed != 0 || r.Rate != 0 || r.ClientRate != 0 || r.ClientConnections != 0 {
		t.Errorf("status after a denied client's attempt: rejected %+v, want some denied, nothing else", r)
	}
}
