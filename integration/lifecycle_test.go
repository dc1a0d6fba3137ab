package integration_test

import (
	"fmt"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// Established connections keep their backend whatever happens to the
// ruleset: their NAT binding lives in conntrack, and their mark is never
// chosen again.
func TestEstablishedConnectionsKeepTheirBackend(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
	mustApply(t, b, s)
	conns := dialAll(t, bed.Clients[0], ap(vip4, 80), 20)
	assertSameBackends(t, "before any change", conns)

	s.Farms[0].Backends[0].Weight = 9
	mustApply(t, b, s)
	assertSameBackends(t, "after a weight change", conns)

	s.Farms[0].Backends = backendsOf(bed, false, 80, 9, 1, 1)
	mustApply(t, b, s)
	assertSameBackends(t, "after adding a backend", conns)

	if res := mustApply(t, b, s); res.Changed || res.Messages != 0 {
		t.Errorf("re-applying the same state sent %d messages (changed=%v), want nothing", res.Messages, res.Changed)
	}
	assertSameBackends(t, "after re-applying the same state", conns)

	// A second process adopts the table: it reads the state and, given the
	// same state, sends nothing.
	b2 := mustOpen(t, bed, lb.Options{})
	if got := len(b2.State().Farms); got != 1 {
		t.Fatalf("adopted %d farms, want 1", got)
	}
	if res := mustApply(t, b2, s); res.Changed || res.Messages != 0 {
		t.Errorf("adopting process re-applying the same state sent %d messages, want nothing", res.Messages)
	}
	assertSameBackends(t, "after a second process adopted the table", conns)
	// And new connections still use all three backends.
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 1100, 8), names(bed, 3), []int{9, 1, 1})
}

func TestBackendStates(t *testing.T) {
	tests := []struct {
		name      string
		flush     bool
		change    func(s *lb.State)
		wantAlive bool // do established connections of backend0 survive?
	}{
		{"drain", false, func(s *lb.State) { s.Farms[0].Backends[0].State = lb.Drain }, true},
		{"drain with conntrack flushing", true, func(s *lb.State) { s.Farms[0].Backends[0].State = lb.Drain }, true},
		{"down", false, func(s *lb.State) { s.Farms[0].Backends[0].State = lb.Down }, true},
		{"down with conntrack flushing", true, func(s *lb.State) { s.Farms[0].Backends[0].State = lb.Down }, false},
		{"removed", false, func(s *lb.State) { s.Farms[0].Backends = s.Farms[0].Backends[1:] }, true},
		{"removed with conntrack flushing", true, func(s *lb.State) { s.Farms[0].Backends = s.Farms[0].Backends[1:] }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{})
			b := mustOpen(t, bed, lb.Options{FlushConntrack: tt.flush})
			s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
			mustApply(t, b, s)
			victim, other := bed.Backends[0].Name(), bed.Backends[1].Name()
			var onVictim, onOther []*testbed.Conn
			for _, c := range dialAll(t, bed.Clients[0], ap(vip4, 80), 30) {
				if c.First().Backend == victim {
					onVictim = append(onVictim, c)
				} else {
					onOther = append(onOther, c)
				}
			}
			if len(onVictim) == 0 || len(onOther) == 0 {
				t.Fatalf("30 connections did not reach both backends (%d on %s)", len(onVictim), victim)
			}
			tt.change(&s)
			res := mustApply(t, b, s)
			t.Logf("apply: %+v", res)

			// No new connection reaches the victim.
			spread := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 200, 8)
			if spread.Errors > 0 || spread.Counts[victim] != 0 || spread.Counts[other] != 200 {
				t.Errorf("new connections: %s, want all 200 on %s", spread, other)
			}
			// Connections to the other backend are never cut.
			assertSameBackends(t, "other backend", onOther)
			for i, c := range onVictim {
				got, err := c.RoundTrip(testContext(t))
				switch {
				case tt.wantAlive && (err != nil || got != victim):
					t.Errorf("connection %d to %s: got %q, %v; want it alive", i, victim, got, err)
				case !tt.wantAlive && err == nil:
					t.Errorf("connection %d to %s still answers (%q); want it cut", i, victim, got)
				}
			}
		})
	}
}

func TestRemoveFarmAndRemoveAll(t *testing.T) {
	bed := mustBed(t, testbed.Options{Ports: []uint16{80, 443}})
	if err := bed.Balancer.AddVIP(vip4); err != nil {
		t.Fatal(err)
	}
	b := mustOpen(t, bed, lb.Options{})
	mustApply(t, b, lb.State{Farms: []lb.Farm{
		farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1)),
		farm("tls", vip4, 443, lb.NAT, backendsOf(bed, false, 443, 1, 1)),
	}})
	if _, err := b.RemoveFarm(testContext(t), "web"); err != nil {
		t.Fatal(err)
	}
	// The VIP is the balancer's own address: without the farm the
	// balancer itself answers, with a reset.
	if r, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip4, 80)); err == nil {
		t.Errorf("removed farm still answered by %s", r.Backend)
	}
	if res := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 443), 50, 4); res.Errors > 0 {
		t.Errorf("the other farm broke: %s", res)
	}
	if err := b.Remove(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if out := listRuleset(t, bed.Balancer.Namespace); out != "" {
		t.Errorf("ruleset after Remove:\n%s\nwant empty", out)
	}
	if _, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip4, 443)); err == nil {
		t.Error("farm answered after Remove")
	}
}

// A change of a farm's weights replaces its schedule (a new one goes in,
// then the old one out): the kernel holds one schedule per farm whatever
// the history, traffic
// follows the newest weights, a new process adopts the table without
// sending anything, and removing the farm leaves none of its elements.
func TestSchedulesAreReplacedNotAccumulated(t *testing.T) {
	bed := mustBed(t, testbed.Options{Ports: []uint16{80, 443}})
	b := mustOpen(t, bed, lb.Options{})
	s := lb.State{Farms: []lb.Farm{
		farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1)),
		farm("other", vip4, 443, lb.NAT, backendsOf(bed, false, 443, 1, 1)),
	}}
	mustApply(t, b, s)
	count := func(set string) int {
		t.Helper()
		conn, err := nft.Open(nft.NetNSFd(bed.Balancer.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		names := []string{set}
		if set == "schedule" { // 64 maps, schedule00 to schedule63
			names = nil
			for i := range 64 {
				names = append(names, fmt.Sprintf("schedule%02d", i))
			}
		}
		n := 0
		for _, name := range names {
			es, err := conn.Elements("l4nft", nft.Set{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			n += len(es)
		}
		return n
	}
	for w := 2; w <= 5; w++ {
		s.Farms[0].Backends[0].Weight = w
		mustApply(t, b, s)
	}
	if got := count("schedule"); got != 2*4 {
		t.Errorf("schedule holds %d elements after 4 changes, want 8 (two farms of two ranges)", got)
	}
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 1200, 8), names(bed, 2), []int{5, 1})

	b2 := mustOpen(t, bed, lb.Options{})
	if res := mustApply(t, b2, s); res.Changed {
		t.Errorf("re-applying in a new process sent %d messages", res.Messages)
	}
	if _, err := b2.RemoveFarm(testContext(t), "web"); err != nil {
		t.Fatal(err)
	}
	for set, want := range map[string]int{"schedule": 4, "backends": 2, "farms": 1, "traffic": 2, "services4": 1} {
		if got := count(set); got != want {
			t.Errorf("after removing a farm, set %s holds %d elements, want %d", set, got, want)
		}
	}
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 443), 600, 8), names(bed, 2), []int{1, 1})
}
