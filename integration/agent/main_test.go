// Package agent_test runs the real l4nft binary against real network
// namespaces: a balancer between clients and backends built by
// integration/testbed, with the agent acting in the balancer's namespace
// through --netns. Nothing in the test process's own namespace is touched
// except a loopback TCP port for the token-protected listener.
//
// The tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and skip without it.
// Run them with
//
//	sudo go test ./integration/agent/
package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/l4nft/l4nft/agent/api"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/integration/testbed"
)

// binary is the l4nft binary built by TestMain, or "" when not root.
var binary string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "l4nft-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "failed to create a temporary directory:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "l4nft")
		root, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			fmt.Fprintln(os.Stderr, "failed to find the module:", err)
			return 1
		}
		args := []string{"build", "-o", binary}
		if raceEnabled {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, "./agent/cmd/l4nft")...)
		build.Dir = filepath.Dir(strings.TrimSpace(string(root)))
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "failed to build l4nft:", err)
			return 1
		}
	}
	return m.Run()
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root (CAP_NET_ADMIN)")
	}
}

var (
	vip  = netip.MustParseAddr("198.51.100.250")
	vip2 = netip.MustParseAddr("198.51.100.251")
)

const port = 80

// farmConfig is the seed's farm: one VIP, backend0 and backend1.
type farmConfig struct {
	Mode           string // nat or dnat
	Weight0        int
	Weight1        int
	State0         string
	Health         string // a flow mapping, or ""
	API            string // an api: section's body as a flow mapping, or ""
	Backend0Addr   netip.Addr
	Backend1Addr   netip.Addr
	Port           int
	VIP            netip.Addr
	ExtraTopFields string
}

var configTemplate = template.Must(template.New("config").Parse(`# test configuration
{{if .API}}api: {{.API}}
{{end}}{{.ExtraTopFields}}farms:
  - name: web
    address: {{.VIP}}
    ports: ["{{.Port}}"]
    protocol: tcp
    mode: {{.Mode}}
{{if .Health}}    health: {{.Health}}
{{end}}    backends:
      - name: backend0
        address: {{.Backend0Addr}}
        port: {{.Port}}
        weight: {{.Weight0}}
        state: {{.State0}}
      - name: backend1
        address: {{.Backend1Addr}}
        port: {{.Port}}
        weight: {{.Weight1}}
`))

func defaultFarm(tb *testbed.Topology) farmConfig {
	return farmConfig{Mode: "nat", Weight0: 1, Weight1: 2, State0: "up", Port: port, VIP: vip,
		Backend0Addr: tb.Backends[0].Addr4, Backend1Addr: tb.Backends[1].Addr4}
}

func (c farmConfig) text(tb testing.TB) string {
	tb.Helper()
	var b strings.Builder
	if err := configTemplate.Execute(&b, c); err != nil {
		tb.Fatalf("failed to render the configuration: %v", err)
	}
	return b.String()
}

// mustWriteConfig writes c to path (replacing it in place, as an editor
// that truncates would).
func mustWriteConfig(tb testing.TB, path, text string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatalf("failed to write %s: %v", path, err)
	}
}

// mustTopology builds named namespaces, so that --netns can name the
// balancer's, with the VIPs on the balancer.
func mustTopology(tb testing.TB) *testbed.Topology {
	tb.Helper()
	topo := testbed.ForTest(tb, testbed.Options{Named: true, Ports: []uint16{port}})
	for _, a := range []netip.Addr{vip, vip2} {
		if err := topo.Balancer.AddVIP(a); err != nil {
			tb.Fatalf("failed to add VIP: %v", err)
		}
	}
	return topo
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reading
// test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is a running `l4nft run`.
type agent struct {
	cmd    *exec.Cmd
	config string
	socket string
	logs   *syncBuffer
	done   chan struct{}
	err    error
	client *api.Client
}

// mustStartAgent runs `l4nft run` on the config file in the balancer's
// namespace and waits until its API answers.
// mustStart skips without root, runs the test in parallel, and starts an
// agent on a new topology with the default farm, changed by edit if not
// nil, written to a config file. extra are more flags for the agent.
func mustStart(t *testing.T, edit func(*farmConfig), extra ...string) (*testbed.Topology, string, *farmConfig, *agent) {
	t.Helper()
	requireRoot(t)
	t.Parallel()
	topo := mustTopology(t)
	path := filepath.Join(t.TempDir(), "l4nft.yaml")
	fc := defaultFarm(topo)
	if edit != nil {
		edit(&fc)
	}
	mustWriteConfig(t, path, fc.text(t))
	return topo, path, &fc, mustStartAgent(t, topo, path, extra...)
}

func mustStartAgent(tb testing.TB, topo *testbed.Topology, config string, extra ...string) *agent {
	tb.Helper()
	socket := filepath.Join(filepath.Dir(config), "l4nft.sock")
	args := append([]string{"run", "--config", config, "--netns", topo.Balancer.NetnsName(), "--socket", socket,
		"--run-dir", filepath.Join(filepath.Dir(config), "run"), "--watch-interval", "50ms", "--log-format", "json"}, extra...)
	a := &agent{cmd: exec.Command(binary, args...), config: config, socket: socket, logs: &syncBuffer{},
		done: make(chan struct{}), client: api.NewUnixClient(socket)}
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		tb.Fatalf("failed to start l4nft run: %v", err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	tb.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
		}
		if strings.Contains(a.logs.String(), "WARNING: DATA RACE") {
			tb.Errorf("the agent reported a data race")
		}
		if tb.Failed() {
			tb.Logf("agent logs:\n%s", a.logs.String())
		}
	})
	err := eventually(10*time.Second, func() error {
		select {
		case <-a.done:
			return fmt.Errorf("l4nft run exited: %v\n%s", a.err, a.logs.String())
		default:
		}
		_, err := a.client.Status(context.Background())
		return err
	})
	if err != nil {
		tb.Fatalf("agent did not come up: %v", err)
	}
	return a
}

// stop sends sig and waits for the agent to exit, returning its exit code.
func (a *agent) stop(tb testing.TB, sig os.Signal) int {
	tb.Helper()
	if err := a.cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("failed to signal the agent: %v", err)
	}
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		tb.Fatalf("agent did not exit within 10s of %v", sig)
	}
	return a.cmd.ProcessState.ExitCode()
}

func (a *agent) status(tb testing.TB) daemon.Status {
	tb.Helper()
	st, err := a.client.Status(context.Background())
	if err != nil {
		tb.Fatalf("failed to get the status: %v", err)
	}
	return st
}

// backend returns a backend's status.
func backendStatus(st daemon.Status, farm, name string) (daemon.BackendStatus, bool) {
	for _, f := range st.Farms {
		if f.Name != farm {
			continue
		}
		for _, b := range f.Backends {
			if b.Name == name {
				return b, true
			}
		}
	}
	return daemon.BackendStatus{}, false
}

// eventually polls cond every 20ms until it returns nil or timeout passes.
func eventually(timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return testbed.Eventually(ctx, 20*time.Millisecond, func(context.Context) error { return cond() })
}

// mustEventually is eventually failing the test.
func mustEventually(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	if err := eventually(timeout, cond); err != nil {
		tb.Fatalf("failed to see %s: %v", what, err)
	}
}

// spread makes n connections from the first client to the VIP.
func spread(tb testing.TB, topo *testbed.Topology, dst netip.Addr, n int) testbed.SpreadResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return topo.Clients[0].Spread(ctx, "tcp4", netip.AddrPortFrom(dst, port), n, 8)
}

// runBinary runs l4nft with args and returns its exit code and output.
func runBinary(tb testing.TB, timeout time.Duration, args ...string) (int, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	if ctx.Err() != nil {
		tb.Fatalf("l4nft %q did not finish within %s:\n%s", args, timeout, out)
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		tb.Fatalf("failed to run l4nft %q: %v", args, err)
	}
	return 0, string(out)
}

// unixHTTP is a raw HTTP client of the agent's socket.
func unixHTTP(socket string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}}}
}

// request sends a request and returns the status code and body.
func request(tb testing.TB, c *http.Client, method, url, token string, body io.Reader) (int, string) {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatalf("failed to build request: %v", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("failed to %s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// errorBody decodes an API error.
func errorBody(tb testing.TB, body string) api.ErrorBody {
	tb.Helper()
	var e api.ErrorBody
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		tb.Fatalf("error body %q is not an API error: %v", body, err)
	}
	return e
}

// tableHandle returns the kernel handle of the agent's table in ns: it
// changes when the table is deleted and created again.
func tableHandle(tb testing.TB, ns *testbed.Namespace) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "nft", "-a", "list", "table", "inet", "l4nft").Output()
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(string(out), "\n")
	_, h, ok := strings.Cut(first, "# handle ")
	if !ok {
		tb.Fatalf("no handle in %q", first)
	}
	return strings.TrimSpace(h)
}
