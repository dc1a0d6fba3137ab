package integration_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// Round robin with weights 1:2:3: one cycle of six connections gives each
// backend exactly its weight, and 3,000 connections give exactly
// 500/1,000/1,500.
func TestRoundRobinSplitsExactlyWithinACycle(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("rr", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 2, 3))
	f.Scheduler = lb.RoundRobin
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	all := names(bed, 3)
	c := bed.Clients[0]

	res := c.Spread(testContext(t), "tcp", ap(vip4, 80), 6, 1)
	if res.Errors > 0 || res.Counts[all[0]] != 1 || res.Counts[all[1]] != 2 || res.Counts[all[2]] != 3 {
		t.Errorf("one cycle: want 1/2/3 connections on %v, got %s", all, res)
	}
	more := c.Spread(testContext(t), "tcp", ap(vip4, 80), 2994, 8)
	for i, want := range []int{500, 1000, 1500} {
		if got := res.Counts[all[i]] + more.Counts[all[i]]; got != want || more.Errors > 0 {
			t.Errorf("3,000 connections: %s took %d, want exactly %d (%s)", all[i], got, want, more)
		}
	}
}

// The hash scheduler keeps a client on one backend while the backends stay
// the same, and with the source port hashed too one client's connections
// split by weight.
func TestHashKeepsAClientOnOneBackend(t *testing.T) {
	bed := mustBed(t, testbed.Options{Clients: 6, Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("hash", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1, 1))
	f.Scheduler = lb.Hash
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})

	reached := map[string]bool{}
	for _, c := range bed.Clients {
		res := c.Spread(testContext(t), "tcp", ap(vip4, 80), 60, 4)
		if res.Errors > 0 || len(res.Counts) != 1 {
			t.Errorf("client %s: want every connection on one backend, got %s", c.Addr4, res)
		}
		for n := range res.Counts {
			reached[n] = true
		}
	}
	if len(reached) < 2 {
		t.Errorf("6 clients all hashed to %v (chance 1 in 243)", reached)
	}

	f.HashFields = []lb.HashField{lb.SrcIP, lb.SrcPort}
	f.Backends = backendsOf(bed, false, 80, 1, 2, 3)
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), spreadConnections, 8), names(bed, 3), []int{1, 2, 3})
	flows := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), 10000, 50)
	if again := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), 10000, 50); !sameFlows(flows, again) {
		t.Errorf("the same flows reached other backends: %v then %v", flows, again)
	}
}

// The symhash scheduler splits by weight and keeps a flow on its backend.
func TestSymHashSplitsByWeight(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("sym", vip4, 80, lb.DNAT, backendsOf(bed, false, 80, 3, 2, 1))
	f.Scheduler = lb.SymHash
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), spreadConnections, 8), names(bed, 3), []int{3, 2, 1})
	flows := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), 11000, 50)
	if again := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), 11000, 50); !sameFlows(flows, again) {
		t.Errorf("the same flows reached other backends: %v then %v", flows, again)
	}
}

// The consistent scheduler: weights hold; two balancers with the same
// configuration choose alike; removing one of N backends moves only its own
// flows and adding one moves about 1/(N+1), each within 1% of all flows.
func TestConsistentHashMovesOnlyWhatItMust(t *testing.T) {
	const n, flows, firstPort = 10, 2000, 20000
	bed := mustBed(t, testbed.Options{Backends: n + 1})
	other := mustBed(t, testbed.Options{Backends: n + 1})
	b := mustOpen(t, bed, lb.Options{})
	b2 := mustOpen(t, other, lb.Options{})
	weights := make([]int, n)
	for i := range weights {
		weights[i] = 1
	}
	f := farm("maglev", vip4, 80, lb.NAT, backendsOf(bed, false, 80, weights...))
	f.Scheduler = lb.Consistent
	f.HashFields = []lb.HashField{lb.SrcIP, lb.SrcPort}
	f.Slots = 2000 * (n + 1) // ~0.3% of the other slots move per change
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	mustApply(t, b2, lb.State{Farms: []lb.Farm{f}}) // the backends' names and addresses are the same

	before := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), firstPort, flows)
	if there := askFlows(t, other.Clients[0], "tcp", ap(vip4, 80), firstPort, flows); !sameFlows(before, there) {
		t.Errorf("two balancers with the same configuration chose differently for %d of %d flows", differ(before, there), flows)
	}

	// Remove the last backend.
	removed := f.Backends[n-1].Name
	g := f
	g.Backends = f.Backends[:n-1]
	mustApply(t, b, lb.State{Farms: []lb.Farm{g}})
	after := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), firstPort, flows)
	own, others := moved(before, after, removed)
	t.Logf("removing 1 of %d backends moved %d of its %d flows and %d of the %d others (%.2f%% of all flows, bound 1/N+1%% = %.2f%%)",
		n, own, count(before, removed), others, flows-count(before, removed), 100*float64(own+others)/flows, 100*(1.0/n+0.01))
	if own != count(before, removed) || float64(others) > 0.01*flows {
		t.Errorf("removing %s: %d of its %d flows moved (want all), %d others moved (want at most 1%% of %d)", removed, own, count(before, removed), others, flows)
	}

	// Add an eleventh.
	h := f
	h.Backends = backendsOf(bed, false, 80, append(weights, 1)...)
	mustApply(t, b, lb.State{Farms: []lb.Farm{h}})
	grown := askFlows(t, bed.Clients[0], "tcp", ap(vip4, 80), firstPort, flows)
	added := h.Backends[n].Name
	toNew, between := 0, 0
	for port, was := range before {
		switch now := grown[port]; {
		case now == was:
		case now == added:
			toNew++
		default:
			between++
		}
	}
	t.Logf("adding an 11th backend moved %d flows to it and %d between the others (%.2f%% of all, bound 1/(N+1)+1%% = %.2f%%)",
		toNew, between, 100*float64(toNew+between)/flows, 100*(1.0/(n+1)+0.01))
	if float64(toNew+between) > (1.0/(n+1)+0.01)*flows || float64(between) > 0.01*flows {
		t.Errorf("adding %s moved %d flows to it and %d between others, more than 1/(N+1)+1%% of %d", added, toNew, between, flows)
	}

	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), spreadConnections, 8), names(bed, n+1), append(weights, 1))
	h.Backends = backendsOf(bed, false, 80, 1, 2, 3)
	mustApply(t, b, lb.State{Farms: []lb.Farm{h}})
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), spreadConnections, 8), names(bed, 3), []int{1, 2, 3})
}

// Persistence: a client's connections go to one backend for the TTL;
// draining it moves them at once; once the TTL passes without connections
// the entries expire and clients choose afresh.
func TestPersistenceKeepsAClientUntilItExpires(t *testing.T) {
	const clients = 16
	bed := mustBed(t, testbed.Options{Clients: clients, Backends: 2})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("sticky", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Persistence = &lb.Persistence{By: lb.PersistSrcIP, TTL: lb.Duration(5 * time.Second)}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	c := bed.Clients[0]

	// The first connection alone: two first connections that the kernel
	// handles at the same time on two CPUs may choose differently.
	res := c.Spread(testContext(t), "tcp", ap(vip4, 80), 1, 1)
	res.Add(c.Spread(testContext(t), "tcp", ap(vip4, 80), 199, 4))
	if res.Errors > 0 || len(res.Counts) != 1 {
		t.Fatalf("200 connections with persistence: want all on one backend, got %s", res)
	}
	var chosen string
	for n := range res.Counts {
		chosen = n
	}
	assertPersistenceEntries(t, b, 1)

	// Drain the chosen backend: the client moves at once, and stays.
	for i := range f.Backends {
		if f.Backends[i].Name == chosen {
			f.Backends[i].State = lb.Drain
		}
	}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	res = c.Spread(testContext(t), "tcp", ap(vip4, 80), 50, 4)
	if res.Errors > 0 || len(res.Counts) != 1 || res.Counts[chosen] != 0 {
		t.Errorf("after draining %s: want every connection on the other backend, got %s", chosen, res)
	}

	// Back up, a short TTL, and every client remembered; then, once the
	// entries expire, the choice is made afresh.
	for i := range f.Backends {
		f.Backends[i].State = lb.Up
	}
	f.Persistence.TTL = lb.Duration(2 * time.Second)
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	first := backendPerClient(t, bed)
	assertPersistenceEntries(t, b, clients)
	wait, cancel := context.WithTimeout(testContext(t), 15*time.Second)
	defer cancel()
	if err := testbed.Eventually(wait, 100*time.Millisecond, func(ctx context.Context) error {
		st, err := b.Status(ctx)
		if err != nil {
			return err
		}
		if n := st.Farms[0].PersistenceEntries; n != 0 {
			return fmt.Errorf("%d persistence entries left", n)
		}
		return nil
	}); err != nil {
		t.Fatalf("entries did not expire after the 2s TTL: %v", err)
	}
	second := backendPerClient(t, bed)
	if sameFlows(first, second) {
		t.Errorf("after expiry all %d clients reached the same backends again (chance 1 in 65,536): %v", clients, first)
	}
}

// assertPersistenceEntries checks the first farm's persistence entries.
func assertPersistenceEntries(t *testing.T, b *lb.Balancer, want uint64) {
	t.Helper()
	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Farms[0].PersistenceEntries; got != want {
		t.Errorf("status: %d persistence entries, want %d", got, want)
	}
}

// backendPerClient makes 20 connections from each client, checks they
// reached one backend, and returns it by client.
func backendPerClient(t *testing.T, bed *testbed.Topology) map[uint16]string {
	t.Helper()
	out := map[uint16]string{}
	for i, c := range bed.Clients {
		res := c.Spread(testContext(t), "tcp", ap(vip4, 80), 1, 1)
		res.Add(c.Spread(testContext(t), "tcp", ap(vip4, 80), 19, 4))
		if res.Errors > 0 || len(res.Counts) != 1 {
			t.Fatalf("client %s: want every connection on one backend, got %s", c.Addr4, res)
		}
		for n := range res.Counts {
			out[uint16(i)] = n
		}
	}
	return out
}

// askFlows makes one connection from each source port first..first+n-1
// (eight at a time) and returns the backend each reached, by port.
func askFlows(t *testing.T, c *testbed.Client, network string, dst netip.AddrPort, first uint16, n int) map[uint16]string {
	t.Helper()
	out := make(map[uint16]string, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	ports := make(chan uint16)
	var failed error
	for range 8 {
		wg.Go(func() {
			for p := range ports {
				r, err := c.AskFrom(testContext(t), network, p, dst)
				mu.Lock()
				if err != nil && failed == nil {
					failed = fmt.Errorf("port %d: %w", p, err)
				}
				out[p] = r.Backend
				mu.Unlock()
			}
		})
	}
	for i := range n {
		ports <- first + uint16(i)
	}
	close(ports)
	wg.Wait()
	if failed != nil {
		t.Fatalf("flows from %s: %v", c.Addr4, failed)
	}
	return out
}

func sameFlows(a, b map[uint16]string) bool { return differ(a, b) == 0 && len(a) == len(b) }

// differ counts the flows of a that b sends elsewhere.
func differ(a, b map[uint16]string) int {
	n := 0
	for k, v := range a {
		if b[k] != v {
			n++
		}
	}
	return n
}

// moved counts the flows that moved from removed, and the others that moved.
func moved(before, after map[uint16]string, removed string) (own, others int) {
	for port, was := range before {
		if after[port] == was {
			continue
		}
		if was == removed {
			own++
		} else {
			others++
		}
	}
	return own, others
}

// count counts the flows on backend.
func count(flows map[uint16]string, backend string) int {
	n := 0
	for _, v := range flows {
		if v == backend {
			n++
		}
	}
	return n
}
