package ha

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/stats"
	"github.com/l4nft/l4nft/lb"
)

// Flows kept open through a failover. The issue aims at 200 TCP and 50
// UDP flows; each asks every requestEvery.
const (
	nTCP = 200
	nUDP = 50
)

// alpha is the significance level at which a split is judged wrong.
const alpha = 0.001

// weights of backend0, backend1, backend2.
var weights = []int{1, 2, 3}

// farm is the configuration both nodes carry.
func farm(mode lb.Mode, ws []int) lb.Farm {
	f := lb.Farm{
		Name:     "web",
		Address:  vip,
		Ports:    []lb.PortRange{lb.Port(servicePort)},
		Protocol: lb.TCPUDP,
		Mode:     mode,
	}
	if mode == lb.NAT {
		f.Source = vip // the backends see the VIP whichever node forwards
	}
	for i, w := range ws {
		f.Backends = append(f.Backends, lb.Backend{
			Name: fmt.Sprintf("backend%d", i), Address: backendAddr(i), Port: servicePort, Weight: w,
		})
	}
	return f
}

// pair is a running active/standby pair: A master, B backup.
type pair struct {
	*bed
	ha  [2]*haNode
	lbs [2]*lb.Balancer
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mustOpen opens a Balancer in the node's namespace and applies s.
func mustOpen(t *testing.T, n *node, s lb.State) *lb.Balancer {
	t.Helper()
	b, err := lb.Open(testContext(t), lb.Options{NetNS: lb.NetNSFd(n.ns.Fd())})
	if err != nil {
		t.Fatalf("failed to open the balancer on %s: %v", n.name, err)
	}
	t.Cleanup(func() { b.Close() })
	if s.Farms != nil {
		if _, err := b.Apply(testContext(t), s); err != nil {
			t.Fatalf("failed to apply on %s: %v", n.name, err)
		}
	}
	return b
}

// mustPair builds the bed, gives both nodes the same configuration, starts
// conntrackd (if withConntrackd) on both and keepalived on A, then on B, and
// waits until A is master and B backup.
func mustPair(t *testing.T, mode lb.Mode, withConntrackd bool) *pair {
	t.Helper()
	requireRoot(t)
	requireTools(t, "keepalived", "nsenter")
	if withConntrackd {
		requireTools(t, "conntrackd")
	}
	p := &pair{bed: mustBed(t, len(weights)+1)} // backend3 joins in TestBackendChangeDuringFailover
	state := lb.State{Farms: []lb.Farm{farm(mode, weights)}}
	for i, n := range p.nodes {
		p.lbs[i] = mustOpen(t, n, state)
		p.ha[i] = p.setupDaemons(t, n, withConntrackd)
		if withConntrackd {
			p.ha[i].startConntrackd(t)
		}
	}
	p.ha[0].startKeepalived(t)
	if err := p.ha[0].waitMaster(15 * time.Second); err != nil {
		t.Fatalf("A did not become master: %v", err)
	}
	p.ha[1].startKeepalived(t)
	if err := p.ha[1].waitBackup(15 * time.Second); err != nil {
		t.Fatalf("B did not become backup: %v", err)
	}
	return p
}

// failover kills A as a crashed node dies: keepalived gets SIGKILL and
// every link of A goes down. It waits until B is master and returns how
// long after the kill B held the VIP and finished its notify script.
func (p *pair) failover(t *testing.T) (vipMoved, committed time.Duration) {
	t.Helper()
	a, b := p.ha[0], p.ha[1]
	start := time.Now()
	a.keepalived.stop(9)
	if err := a.setLinks(false, true); err != nil {
		t.Fatalf("failed to take A down: %v", err)
	}
	err := eventually(15*time.Second, func() error {
		if ok, err := b.hasAddr(vip); err != nil || !ok {
			return fmt.Errorf("B does not hold the VIP (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("B did not take over: %v", err)
	}
	vipMoved = time.Since(start)
	if err := b.waitMaster(15 * time.Second); err != nil {
		t.Fatalf("B did not finish becoming master: %v", err)
	}
	return vipMoved, time.Since(start)
}

// settle waits for the flows to be answered for a while and checks the
// pair is quiet before a failover: conntrackd on B has every flow.
func (p *pair) settle(t *testing.T, l *load) {
	t.Helper()
	if err := l.waitAnswers(time.Now(), 10*time.Second); err != nil {
		t.Fatalf("before the failover: %v", err)
	}
	if p.ha[1].ctConf != "" {
		err := eventually(10*time.Second, func() error {
			m, err := p.nodes[1].farmFlows()
			if err != nil {
				return err
			}
			if len(m) < len(l.flows) {
				return fmt.Errorf("B's conntrack table holds %d of %d flows", len(m), len(l.flows))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("conntrackd did not sync every flow to B: %v", err)
		}
	}
	if r := l.result(); r.lost > 0 {
		t.Fatalf("flows lost before any failover: %v (first: %v)", r, r.firstErr)
	}
	l.resetGaps()
}

// TestFailoverKeepsFlows: with conntrackd syncing A's connections to B,
// killing A moves the VIP and the backends' gateway to B and every TCP and
// UDP flow goes on, on the same backend, with the source the backend saw
// unchanged (NAT mode: the VIP; DNAT mode: the client).
func TestFailoverKeepsFlows(t *testing.T) {
	for _, mode := range []lb.Mode{lb.NAT, lb.DNAT} {
		t.Run(mode.String(), func(t *testing.T) {
			p := mustPair(t, mode, true)
			l := startLoad(t, p.client, nTCP, nUDP)
			p.settle(t, l)
			vipMoved, committed := p.failover(t)
			since := time.Now()
			if err := l.waitAnswers(since, 20*time.Second); err != nil {
				t.Errorf("after the failover: %v", err)
			}
			time.Sleep(time.Second) // some more round trips through B
			r := l.result()
			t.Logf("%v: VIP on B %v after A was killed, notify script done after %v", mode, vipMoved.Round(time.Millisecond), committed.Round(time.Millisecond))
			t.Logf("%v: %v", mode, r)
			if r.lost > 0 {
				t.Errorf("%d flows lost (first: %v), want 0", r.lost, r.firstErr)
			}
			checkSources(t, l, mode)
		})
	}
}

// checkSources checks every flow's backend saw the VIP (NAT) or the
// client (DNAT) as its peer.
func checkSources(t *testing.T, l *load, mode lb.Mode) {
	t.Helper()
	want := vip.String()
	if mode == lb.DNAT {
		want = clientAddr.String()
	}
	for _, f := range l.flows {
		if !strings.HasPrefix(f.source, want+":") {
			t.Errorf("a backend saw %s, want %s", f.source, want)
			return
		}
	}
}

// checkSplit judges counts against the wanted weights by backend name with
// a chi-square test; a backend not in want must get nothing.
func checkSplit(t *testing.T, what string, counts map[string]int, want map[string]int) {
	t.Helper()
	var obs []int
	var shares []float64
	for _, name := range slices.Sorted(maps.Keys(want)) {
		obs = append(obs, counts[name])
		shares = append(shares, float64(want[name]))
	}
	for name, n := range counts {
		if _, ok := want[name]; !ok && n > 0 {
			t.Errorf("%s: %d connections answered by %s, which should get none", what, n, name)
		}
	}
	stat, pv, err := stats.ChiSquare(obs, shares)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("%s: %v for weights %v: chi-square %.2f, p %.3f", what, obs, want, stat, pv)
	if pv < alpha {
		t.Errorf("%s: split %v does not follow weights %v (p = %.5f < %v)", what, obs, want, pv, alpha)
	}
}

// weightsByName returns the weights of farm(…, ws) by backend name.
func weightsByName(ws []int) map[string]int {
	m := map[string]int{}
	for i, w := range ws {
		m[fmt.Sprintf("backend%d", i)] = w
	}
	return m
}
