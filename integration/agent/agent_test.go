package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/api"
	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/integration/stats"
	"github.com/l4nft/l4nft/lb"
)

// checkSplit fails unless backend0 took share want0 of the connections and
// backend1 the rest, by a chi-square test. These tests check that the agent
// installed the weights it was given, not the library's accuracy (the
// library's tests do that at p = 0.001): the level is 1e-6, so that chance
// never fails the suite, while a wrong weight still does (1:1 where 1:2 is
// wanted gives p below 1e-8 over 300 connections).
func checkSplit(tb testing.TB, counts map[string]int, want0 float64) {
	tb.Helper()
	obs := []int{counts["backend0"], counts["backend1"]}
	if obs[0]+obs[1] == 0 {
		tb.Fatalf("no connection was answered: %v", counts)
	}
	stat, p, err := stats.ChiSquare(obs, []float64{want0, 1 - want0})
	if err != nil {
		tb.Fatal(err)
	}
	if p < 1e-6 {
		tb.Errorf("split %v does not match share %.3f for backend0 (chi2=%.2f, p=%.2g)", counts, want0, stat, p)
	}
}

func TestConfigFileSplitsTrafficByWeight(t *testing.T) {
	topo, _, _, a := mustStart(t, nil)

	r := spread(t, topo, vip, 300)
	if r.Errors > 0 {
		t.Fatalf("%d connections failed: %v", r.Errors, r.Err)
	}
	checkSplit(t, r.Counts, 1.0/3)

	// The kernel's counters, through status and metrics, agree with what
	// the clients saw.
	st := a.status(t)
	for _, name := range []string{"backend0", "backend1"} {
		b, ok := backendStatus(st, "web", name)
		if !ok || b.Connections != uint64(r.Counts[name]) {
			t.Errorf("status of %s: %+v, want %d connections", name, b, r.Counts[name])
		}
	}
	if st.LastApply.Reason != "start" || !st.LastApply.Changed || st.Rebuilds != 1 {
		t.Errorf("last apply %+v, rebuilds %d; want the start's table build", st.LastApply, st.Rebuilds)
	}
	code, body := request(t, unixHTTP(a.socket), "GET", "http://l4nft/metrics", "", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	for _, want := range []string{
		fmt.Sprintf(`l4nft_backend_connections_total{backend="backend1",farm="web"} %d`, r.Counts["backend1"]),
		`l4nft_backend_weight{backend="backend1",farm="web"} 2`,
		`l4nft_backend_state{backend="backend0",farm="web",state="up"} 1`,
		`l4nft_farm_connections_total{farm="web"} 300`,
		`l4nft_apply_duration_seconds_count 1`,
		`l4nft_last_successful_apply_timestamp_seconds`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	code, out := runBinary(t, 10*time.Second, "status", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, "backend1") || !strings.Contains(out, "203.0.113.11:80") {
		t.Errorf("l4nft status: exit %d\n%s", code, out)
	}
	code, out = runBinary(t, 10*time.Second, "status", "--json", "--socket", a.socket)
	if code != 0 || !strings.Contains(out, `"effective_state": "up"`) {
		t.Errorf("l4nft status --json: exit %d\n%s", code, out)
	}
}

func TestEditedFileIsReloaded(t *testing.T) {
	topo, path, fc, a := mustStart(t, nil)

	fc.State0 = "drain"
	mustWriteConfig(t, path, fc.text(t))
	mustEventually(t, 5*time.Second, "backend0 drained after the file changed", func() error {
		if b, _ := backendStatus(a.status(t), "web", "backend0"); b.Effective != lb.Drain {
			return fmt.Errorf("backend0 is %s", b.Effective)
		}
		return nil
	})
	if st := a.status(t); st.LastApply.Reason != "reload" || st.LastApply.Rebuilt {
		t.Errorf("last apply %+v, want an incremental reload", st.LastApply)
	}
	if r := spread(t, topo, vip, 50); r.Counts["backend1"] != 50 {
		t.Errorf("with backend0 drained: %v (%v), want all 50 on backend1", r, r.Err)
	}
}

func TestSIGHUPReloads(t *testing.T) {
	// No polling: only SIGHUP reloads.
	topo, path, fc, a := mustStart(t, nil, "--watch-interval", "-1s", "--resync-interval", "-1s")

	fc.Weight0, fc.Weight1 = 1, 1
	mustWriteConfig(t, path, fc.text(t))
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("failed to send SIGHUP: %v", err)
	}
	mustEventually(t, 5*time.Second, "the new weight after SIGHUP", func() error {
		if b, _ := backendStatus(a.status(t), "web", "backend1"); b.Weight != 1 || !b.Installed {
			return fmt.Errorf("backend1 has weight %d", b.Weight)
		}
		return nil
	})
	r := spread(t, topo, vip, 300)
	checkSplit(t, r.Counts, 0.5)
}

func TestAPIChangeIsAppliedAndPersisted(t *testing.T) {
	topo, path, _, a := mustStart(t, nil)
	ctx := context.Background()

	// The CLI, through the API.
	code, out := runBinary(t, 10*time.Second, "backend", "web", "backend0", "--state", "drain", "--socket", a.socket)
	if code != 0 {
		t.Fatalf("l4nft backend: exit %d\n%s", code, out)
	}
	if r := spread(t, topo, vip, 50); r.Counts["backend1"] != 50 {
		t.Errorf("with backend0 drained through the API: %v (%v), want all 50 on backend1", r, r.Err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("failed to load the persisted file: %v", err)
	}
	if f, _ := c.Farm("web"); f.Backends[0].State != lb.Drain || f.Backends[1].Weight != 2 {
		t.Errorf("persisted farm %+v, want backend0 drained, backend1 of weight 2", f)
	}

	// Weight and a new farm through the client.
	w := 5
	up := lb.Up
	if _, err := a.client.SetBackend(ctx, "web", "backend0", daemon.BackendChange{Weight: &w, State: &up}); err != nil {
		t.Fatalf("failed to set backend0: %v", err)
	}
	web, err := a.client.Farm(ctx, "web")
	if err != nil {
		t.Fatalf("failed to get farm web: %v", err)
	}
	other := web
	other.Name, other.Address = "other", vip2
	other.Backends = other.Backends[1:]
	if _, err := a.client.PutFarm(ctx, other); err != nil {
		t.Fatalf("failed to create farm other: %v", err)
	}
	if r := spread(t, topo, vip2, 20); r.Counts["backend1"] != 20 {
		t.Errorf("farm other: %v (%v), want all 20 on backend1", r, r.Err)
	}
	c, err = config.Load(path)
	if err != nil {
		t.Fatalf("failed to load the persisted file: %v", err)
	}
	if f, ok := c.Farm("other"); !ok || len(f.Backends) != 1 {
		t.Errorf("farm other not persisted: %+v", c.Farms)
	}
	if f, _ := c.Farm("web"); f.Backends[0].Weight != 5 || f.Backends[0].State != lb.Up {
		t.Errorf("persisted backend0 %+v, want weight 5, up", f.Backends[0])
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode after persisting: %v, %v", fi.Mode(), err)
	}

	// A change that fails validation changes nothing.
	bad := 0
	_, err = a.client.SetBackend(ctx, "web", "backend0", daemon.BackendChange{Weight: &bad})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || len(ae.Problems) != 1 ||
		ae.Problems[0].Path() != "farms[web].backends[backend0].weight" {
		t.Errorf("weight 0 through the API: %v, want 400 naming the weight", err)
	}
	if err := a.client.DeleteFarm(ctx, "other"); err != nil {
		t.Fatalf("failed to delete farm other: %v", err)
	}
	if _, err := a.client.Farm(ctx, "other"); !api.IsNotFound(err) {
		t.Errorf("farm other after delete: %v, want 404", err)
	}
	c, _ = config.Load(path)
	if _, ok := c.Farm("other"); ok {
		t.Errorf("deleted farm other is still in the file")
	}

	// A restart keeps API changes: they are in the file.
	a.stop(t, syscall.SIGTERM)
	a = mustStartAgent(t, topo, path)
	if b, _ := backendStatus(a.status(t), "web", "backend0"); b.Weight != 5 {
		t.Errorf("after restart backend0 has weight %d, want 5", b.Weight)
	}
}

func TestFailingBackendIsMarkedDown(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	path := filepath.Join(t.TempDir(), "l4nft.yaml")
	const interval, fall = 200 * time.Millisecond, 3
	fc := defaultFarm(topo)
	fc.Health = fmt.Sprintf("{type: tcp, interval: %s, timeout: 100ms, rise: 2, fall: %d}", interval, fall)
	mustWriteConfig(t, path, fc.text(t))
	a := mustStartAgent(t, topo, path)
	mustEventually(t, 5*time.Second, "first health checks", func() error {
		b, _ := backendStatus(a.status(t), "web", "backend0")
		if b.Health == nil || b.Health.Checks == 0 || !b.Health.Healthy {
			return fmt.Errorf("backend0 health %+v", b.Health)
		}
		return nil
	})

	topo.Backends[0].StopServers()
	stopped := time.Now()
	mustEventually(t, 5*time.Second, "backend0 marked down", func() error {
		b, _ := backendStatus(a.status(t), "web", "backend0")
		if b.Health.Healthy || b.Effective != lb.Drain {
			return fmt.Errorf("backend0 health %+v, installed %s", b.Health, b.Effective)
		}
		return nil
	})
	// fall failed checks take at most fall intervals after the first
	// failing one, which starts within an interval; allow one more for
	// the apply and the polling.
	if took, limit := time.Since(stopped), interval*(fall+2); took > limit {
		t.Errorf("backend0 marked down after %s, want within %s", took, limit)
	} else {
		t.Logf("backend0 marked down %s after its server stopped (interval*fall = %s)", took.Round(time.Millisecond), interval*fall)
	}
	if r := spread(t, topo, vip, 60); r.Counts["backend1"] != 60 || r.Errors != 0 {
		t.Errorf("with backend0 down: %v (%v), want all 60 on backend1", r, r.Err)
	}
	code, body := request(t, unixHTTP(a.socket), "GET", "http://l4nft/metrics", "", nil)
	if code != http.StatusOK || !strings.Contains(body, `l4nft_backend_healthy{backend="backend0",farm="web"} 0`) {
		t.Errorf("metrics do not show backend0 unhealthy")
	}

	// An operator's drain wins over health: backend1 drained stays so.
	if err := topo.Backends[0].StartServers(); err != nil {
		t.Fatalf("failed to restart backend0's servers: %v", err)
	}
	mustEventually(t, 5*time.Second, "backend0 back after rise checks", func() error {
		if b, _ := backendStatus(a.status(t), "web", "backend0"); !b.Health.Healthy || b.Effective != lb.Up {
			return fmt.Errorf("backend0 health %+v, installed %s", b.Health, b.Effective)
		}
		return nil
	})
	r := spread(t, topo, vip, 300)
	checkSplit(t, r.Counts, 1.0/3)
	if strings.Count(a.logs.String(), `"msg":"backend unhealthy"`) != 1 || strings.Count(a.logs.String(), `"msg":"backend healthy"`) != 1 {
		t.Errorf("want one log line per health transition")
	}
}

func TestRestartKeepsEstablishedConnections(t *testing.T) {
	topo, path, _, a := mustStart(t, func(fc *farmConfig) { fc.Health = "{type: tcp, interval: 100ms}" })
	handle := tableHandle(t, topo.Balancer.Namespace)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var conns []interface {
		RoundTrip(context.Context) (string, error)
	}
	var firsts []string
	for range 10 {
		c, err := topo.Clients[0].Dial(ctx, "tcp4", netip.AddrPortFrom(vip, port))
		if err != nil {
			t.Fatalf("failed to connect: %v", err)
		}
		defer c.Close()
		conns = append(conns, c)
		firsts = append(firsts, c.First().Backend)
	}
	check := func(when string) {
		t.Helper()
		for i, c := range conns {
			got, err := c.RoundTrip(ctx)
			if err != nil || got != firsts[i] {
				t.Errorf("%s: connection %d answered %q, %v; want %s", when, i, got, err, firsts[i])
			}
		}
	}
	check("before the restart")

	if code := a.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("agent exited %d on SIGTERM, want 0", code)
	}
	check("while the agent is stopped")
	if r := spread(t, topo, vip, 30); r.Errors != 0 || len(r.Counts) != 2 {
		t.Errorf("new connections while the agent is stopped: %v (%v)", r, r.Err)
	}

	a = mustStartAgent(t, topo, path)
	check("after the restart")
	st := a.status(t)
	if st.Changes != 0 || st.Rebuilds != 0 || st.LastApply.Changed {
		t.Errorf("the restarted agent changed the kernel: changes %d, rebuilds %d, last apply %+v", st.Changes, st.Rebuilds, st.LastApply)
	}
	if h := tableHandle(t, topo.Balancer.Namespace); h != handle {
		t.Errorf("table handle %s after restart, was %s: the table was rebuilt", h, handle)
	}

	// --cleanup-on-exit removes the table, and only on request.
	a.stop(t, syscall.SIGINT)
	a = mustStartAgent(t, topo, path, "--cleanup-on-exit")
	if code := a.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("agent exited %d, want 0", code)
	}
	if h := tableHandle(t, topo.Balancer.Namespace); h != "" {
		t.Errorf("table still there (handle %s) after --cleanup-on-exit", h)
	}
}

func TestBadFileIsRejected(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "l4nft.yaml")
	fc := defaultFarm(topo)
	mustWriteConfig(t, path, fc.text(t))
	a := mustStartAgent(t, topo, path)
	ruleset, err := a.client.Ruleset(context.Background())
	if err != nil {
		t.Fatalf("failed to get the ruleset: %v", err)
	}
	handle := tableHandle(t, topo.Balancer.Namespace)

	fc.Weight1 = 0
	bad := strings.Replace(fc.text(t), "protocol: tcp", "protocol: tcp\n    colour: blue", 1)
	mustWriteConfig(t, path, bad)
	mustEventually(t, 5*time.Second, "the file rejected", func() error {
		if a.status(t).ConfigError == nil {
			return errors.New("no configuration error in status")
		}
		return nil
	})
	st := a.status(t)
	var got []string
	for _, p := range st.ConfigError.Problems {
		got = append(got, p.String())
	}
	want := []string{
		path + `:7: farms[web].colour: unknown field "colour" (want one of address, allow, backends, deny, hash_fields, health, helpers, limits, mode, name, persistence, ports, protocol, scheduler, slots, source, tcp_strict)`,
		path + `:18: farms[web].backends[backend1].weight: 0 is not a weight (want 1-10000); to stop new connections set state drain`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems in status:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if strings.Count(a.logs.String(), "configuration rejected") != 1 {
		t.Errorf("want one log line for the rejected file, got:\n%s", a.logs.String())
	}
	if r, _ := a.client.Ruleset(context.Background()); r != ruleset {
		t.Errorf("the ruleset changed after a bad file")
	}
	if h := tableHandle(t, topo.Balancer.Namespace); h != handle {
		t.Errorf("the table was replaced after a bad file")
	}
	r := spread(t, topo, vip, 300)
	checkSplit(t, r.Counts, 1.0/3)

	// The API refuses to build on an invalid file rather than overwrite it.
	w := 3
	_, err = a.client.SetBackend(context.Background(), "web", "backend0", daemon.BackendChange{Weight: &w})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusConflict {
		t.Errorf("API change on top of a bad file: %v, want 409", err)
	}
	if b, _ := os.ReadFile(path); string(b) != bad {
		t.Errorf("the bad file was overwritten")
	}
	// validate says the same, exit 1.
	code, out := runBinary(t, 10*time.Second, "validate", path)
	if code != 1 || !strings.Contains(out, want[0]) || !strings.Contains(out, want[1]) {
		t.Errorf("l4nft validate: exit %d\n%s", code, out)
	}

	// Fixing the file clears the error.
	fc.Weight1 = 4
	mustWriteConfig(t, path, fc.text(t))
	mustEventually(t, 5*time.Second, "the fixed file applied", func() error {
		st := a.status(t)
		if b, _ := backendStatus(st, "web", "backend1"); st.ConfigError != nil || b.Weight != 4 {
			return fmt.Errorf("config error %v, backend1 weight %d", st.ConfigError, b.Weight)
		}
		return nil
	})
}

func TestAPITokenIsRequired(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	dir := t.TempDir()
	token := "s3cret-token-for-tests"
	tokenFile := filepath.Join(dir, "token")
	mustWriteConfig(t, tokenFile, token+"\n")
	addr := freeLoopbackPort(t)
	fc := defaultFarm(topo)
	fc.API = fmt.Sprintf("{listen: %q, token_file: %q}", addr, tokenFile)
	path := filepath.Join(dir, "l4nft.yaml")
	mustWriteConfig(t, path, fc.text(t))
	mustStartAgent(t, topo, path)

	c := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + addr
	mustEventually(t, 5*time.Second, "the TCP listener", func() error {
		_, err := c.Get(base + "/healthz")
		return err
	})
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/v1/status", "", http.StatusUnauthorized},
		{"GET", "/v1/status", "wrong", http.StatusUnauthorized},
		{"GET", "/v1/status", token + "x", http.StatusUnauthorized},
		{"GET", "/metrics", "", http.StatusUnauthorized},
		{"PATCH", "/v1/farms/web/backends/backend0", "", http.StatusUnauthorized},
		{"GET", "/v1/status", token, http.StatusOK},
		{"GET", "/metrics", token, http.StatusOK},
		{"GET", "/healthz", "", http.StatusOK},
	} {
		code, body := request(t, c, tc.method, base+tc.path, tc.token, strings.NewReader(`{"weight": 3}`))
		if code != tc.want {
			t.Errorf("%s %s with token %q: %d %s, want %d", tc.method, tc.path, tc.token, code, body, tc.want)
		}
	}
	// The CLI with the token.
	code, out := runBinary(t, 10*time.Second, "status", "--addr", base, "--token-file", tokenFile)
	if code != 0 || !strings.Contains(out, "backend0") {
		t.Errorf("l4nft status --addr: exit %d\n%s", code, out)
	}

	// Refusals to start: a listener without a token, or on a non-loopback
	// address without TLS.
	for name, section := range map[string]string{
		"no token":     fmt.Sprintf("{listen: %q}", addr),
		"empty token":  fmt.Sprintf("{listen: %q, token_file: %q}", addr, filepath.Join(dir, "empty")),
		"exposed, TLS": fmt.Sprintf("{listen: \"192.0.2.1:9100\", token_file: %q}", tokenFile),
	} {
		mustWriteConfig(t, filepath.Join(dir, "empty"), "")
		fc.API = section
		p := filepath.Join(dir, "refused.yaml")
		mustWriteConfig(t, p, fc.text(t))
		code, out := runBinary(t, 20*time.Second, "run", "--config", p, "--netns", topo.Balancer.NetnsName(),
			"--socket", filepath.Join(dir, "refused.sock"))
		if code != 1 || !strings.Contains(out, "token") && !strings.Contains(out, "tls") {
			t.Errorf("%s: l4nft run exited %d, want 1 with a reason:\n%s", name, code, out)
		}
	}
}

func freeLoopbackPort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("failed to find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestAPIRejectsBadBodies(t *testing.T) {
	_, path, _, a := mustStart(t, nil)
	before, _ := os.ReadFile(path)
	c := unixHTTP(a.socket)

	huge := `{"name": "web", "address": "198.51.100.250", "ports": ["80"], "backends": [], "pad": "` + strings.Repeat("x", 2<<20) + `"}`
	for _, tc := range []struct {
		name, method, path, body, want string
	}{
		{"oversized", "PUT", "/v1/farms/web", huge, "request body larger than"},
		{"malformed", "PUT", "/v1/farms/web", `{"name": "web",`, "malformed JSON"},
		{"not an object", "POST", "/v1/farms", `[1, 2]`, "want a mapping"},
		{"empty", "POST", "/v1/farms", ``, "empty request body"},
		{"unknown field", "PUT", "/v1/farms/web", `{"name": "web", "address": "198.51.100.250", "ports": ["80"], "backends": [], "colour": 1}`, "unknown field"},
		{"invalid", "POST", "/v1/farms", `{"name": "new", "address": "198.51.100.250", "ports": ["80"], "backends": []}`, "invalid configuration"},
		{"name mismatch", "PUT", "/v1/farms/web", `{"name": "other", "address": "198.51.100.251", "ports": ["80"], "backends": []}`, "names farm"},
		{"bad state", "PATCH", "/v1/farms/web/backends/backend0", `{"state": "sleeping"}`, `unknown state "sleeping" (want up, drain, down)`},
		{"unknown change", "PATCH", "/v1/farms/web/backends/backend0", `{"wieght": 3}`, "unknown field"},
		{"no change", "PATCH", "/v1/farms/web/backends/backend0", `{}`, "nothing to change"},
		{"trailing junk", "PATCH", "/v1/farms/web/backends/backend0", `{"weight": 3} x`, "malformed JSON"},
	} {
		code, body := request(t, c, tc.method, "http://l4nft"+tc.path, "", strings.NewReader(tc.body))
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400 (%s)", tc.name, code, body)
			continue
		}
		if e := errorBody(t, body); !strings.Contains(e.Error+fmt.Sprint(e.Problems), tc.want) {
			t.Errorf("%s: error %q %v, want it to mention %q", tc.name, e.Error, e.Problems, tc.want)
		}
	}
	if code, _ := request(t, c, "GET", "http://l4nft/healthz", "", nil); code != http.StatusOK {
		t.Errorf("the agent is unhealthy after bad requests: %d", code)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Errorf("bad requests changed the file")
	}
	if code, _ := request(t, c, "DELETE", "http://l4nft/v1/farms/nope", "", nil); code != http.StatusNotFound {
		t.Errorf("DELETE of a missing farm: %d, want 404", code)
	}
}

func TestApplyRenderValidate(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	path := filepath.Join(t.TempDir(), "l4nft.json")
	fc := defaultFarm(topo)
	fc.Mode = "dnat"
	// JSON is accepted too.
	c, err := config.ParseAndValidate("x.yaml", []byte(fc.text(t)))
	if err != nil {
		t.Fatal(err)
	}
	js, err := c.Marshal(path)
	if err != nil {
		t.Fatal(err)
	}
	mustWriteConfig(t, path, string(js))

	if code, out := runBinary(t, 10*time.Second, "validate", path); code != 0 {
		t.Fatalf("validate: exit %d\n%s", code, out)
	}
	code, rendered := runBinary(t, 10*time.Second, "render", path)
	if code != 0 || !strings.Contains(rendered, "table inet l4nft {") {
		t.Fatalf("render: exit %d\n%s", code, rendered)
	}
	if h := tableHandle(t, topo.Balancer.Namespace); h != "" {
		t.Fatalf("render touched the kernel")
	}
	runDir := filepath.Join(t.TempDir(), "run") // the instance lock and state file, private to the test
	code, out := runBinary(t, 20*time.Second, "apply", "--run-dir", runDir, path, "--netns", topo.Balancer.NetnsName())
	if code != 0 || !strings.Contains(out, "built") {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := topo.Clients[0].Ask(ctx, "tcp4", netip.AddrPortFrom(vip, port))
	if err != nil || reply.Source.Addr() != topo.Clients[0].Addr4 {
		t.Errorf("in dnat mode the backend saw %v (%v), want the client's %s", reply.Source, err, topo.Clients[0].Addr4)
	}
	r := spread(t, topo, vip, 300)
	checkSplit(t, r.Counts, 1.0/3)
	if code, out := runBinary(t, 20*time.Second, "apply", "--run-dir", runDir, "--netns", topo.Balancer.NetnsName(), path); code != 0 || !strings.Contains(out, "already matches") {
		t.Errorf("second apply: exit %d\n%s", code, out)
	}
	if states, _ := filepath.Glob(filepath.Join(runDir, "*.state")); len(states) != 1 {
		t.Errorf("apply left %d state files in its run directory, want 1", len(states))
	}
	if code, out := runBinary(t, 20*time.Second, "apply", "--run-dir", runDir, path, "--netns", "no-such-netns-l4nft"); code != 1 {
		t.Errorf("apply to a missing namespace: exit %d, want 1\n%s", code, out)
	}
}

func TestDemo(t *testing.T) {
	requireRoot(t)
	before, _ := os.ReadDir("/run/netns")
	start := time.Now()
	code, out := runBinary(t, 60*time.Second, "demo")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s", code, out)
	}
	t.Logf("demo took %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"NAT mode", "DNAT mode", "198.51.100.250", "192.0.2.2", "table inet l4nft {", "Sandbox removed"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	after, _ := os.ReadDir("/run/netns")
	if len(after) > len(before) {
		t.Errorf("demo left namespaces behind: %v -> %v", before, after)
	}
}
