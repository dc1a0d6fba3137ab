package integration_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/stats"
	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// Addresses of the test bed (see package testbed) and the VIPs used here.
var (
	vip4 = netip.MustParseAddr("198.51.100.250")
	vip6 = netip.MustParseAddr("2001:db8:f::250")
)

// alpha is the significance level at which a split is judged wrong.
const alpha = 0.001

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mustBed builds a topology for the test and tears it down after it.
func mustBed(t *testing.T, opts testbed.Options) *testbed.Topology {
	t.Helper()
	requireRoot(t)
	return testbed.ForTest(t, opts)
}

// mustOpen opens a balancer in the bed's balancer namespace.
func mustOpen(t *testing.T, bed *testbed.Topology, opts lb.Options) *lb.Balancer {
	t.Helper()
	opts.NetNS = lb.NetNSFd(bed.Balancer.Fd())
	b, err := lb.Open(testContext(t), opts)
	if err != nil {
		t.Fatalf("failed to open balancer: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func mustApply(t *testing.T, b *lb.Balancer, s lb.State) lb.Result {
	t.Helper()
	res, err := b.Apply(testContext(t), s)
	if err != nil {
		t.Fatalf("failed to apply: %v", err)
	}
	return res
}

// backendsOf returns lb backends for the bed's backends, weighted as given.
// Port 0 keeps the client's port.
func backendsOf(bed *testbed.Topology, v6 bool, port uint16, weights ...int) []lb.Backend {
	var out []lb.Backend
	for i, w := range weights {
		be := bed.Backends[i]
		a := be.Addr4
		if v6 {
			a = be.Addr6
		}
		out = append(out, lb.Backend{Name: be.Name(), Address: a, Port: port, Weight: w})
	}
	return out
}

// farm is a one-port farm on vip over the bed's backends.
func farm(name string, vip netip.Addr, port uint16, mode lb.Mode, backends []lb.Backend) lb.Farm {
	return lb.Farm{Name: name, Address: vip, Ports: []lb.PortRange{lb.Port(port)}, Mode: mode, Backends: backends}
}

// spreadOf returns a function that makes n connections from c to dst, at
// most concurrency at a time, and counts the backends that answered.
func spreadOf(t *testing.T, c *testbed.Client, network string, dst netip.AddrPort, n, concurrency int) func() testbed.SpreadResult {
	return func() testbed.SpreadResult { return c.Spread(testContext(t), network, dst, n, concurrency) }
}

// assertSplit fails the test unless the connections sample makes pass a
// chi-square test against the weights at significance alpha, and only
// backends with a weight answered. A correct balancer fails one such test
// in a thousand by chance, and a suite that makes dozens of them would
// then fail now and again: so a sample that fails is judged again on a
// fresh sample, and the test fails only if that one fails too (chance:
// one in a million). A real bias fails both.
func assertSplit(t *testing.T, sample func() testbed.SpreadResult, names []string, weights []int) {
	t.Helper()
	for try := 1; ; try++ {
		res := sample()
		if res.Errors > 0 {
			t.Fatalf("%d connections failed, first: %v", res.Errors, res.Err)
		}
		for n := range res.Counts {
			if !slices.Contains(names, n) {
				t.Fatalf("backend %s answered but has no weight here: %s", n, res)
			}
		}
		obs := make([]int, len(names))
		shares := make([]float64, len(names))
		for i, n := range names {
			obs[i], shares[i] = res.Counts[n], float64(weights[i])
		}
		stat, p, err := stats.ChiSquare(obs, shares)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("split %s against weights %v: chi2=%.2f p=%.3f", res, weights, stat, p)
		switch {
		case p >= alpha:
			return
		case try == 2:
			t.Errorf("split %s does not match weights %v twice in a row (chi2=%.2f, p=%.2g < %v)", res, weights, stat, p, alpha)
			return
		}
		t.Logf("p < %v; judging a fresh sample", alpha)
	}
}

func names(bed *testbed.Topology, n int) []string {
	var out []string
	for _, b := range bed.Backends[:n] {
		out = append(out, b.Name())
	}
	return out
}

// listRuleset returns `nft list ruleset` of the namespace: what a human
// sees, and a byte-for-byte witness that nothing changed.
func listRuleset(t *testing.T, ns *testbed.Namespace) string {
	t.Helper()
	return runNft(t, ns, nil, "list", "ruleset")
}

// runNft runs nft inside a namespace, with stdin if given.
func runNft(t *testing.T, ns *testbed.Namespace, stdin []byte, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft is not installed (apt-get install nftables): %v", err)
	}
	cmd := ns.Command(testContext(t), "nft", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("failed to run nft %v: %v: %s", args, err, errb.String())
	}
	return out.String()
}

// dialAll opens n keep-alive TCP connections to dst and returns them with
// the backend each was given.
func dialAll(t *testing.T, c *testbed.Client, dst netip.AddrPort, n int) []*testbed.Conn {
	t.Helper()
	var conns []*testbed.Conn
	for range n {
		conn, err := c.Dial(testContext(t), "tcp", dst)
		if err != nil {
			t.Fatalf("failed to dial %s: %v", dst, err)
		}
		conns = append(conns, conn)
	}
	return conns
}

// assertSameBackends checks every connection still reaches the backend it
// first reached.
func assertSameBackends(t *testing.T, step string, conns []*testbed.Conn) {
	t.Helper()
	for i, c := range conns {
		got, err := c.RoundTrip(testContext(t))
		if err != nil {
			t.Fatalf("%s: connection %d (%s) broke: %v", step, i, c.First().Backend, err)
		}
		if got != c.First().Backend {
			t.Errorf("%s: connection %d moved from %s to %s", step, i, c.First().Backend, got)
		}
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
