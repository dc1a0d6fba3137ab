package integration_test

import (
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// Backup servers: priority 1 {a, b}, priority 2 {c}. Traffic goes to a and
// b; with both down it goes to c in the same change; with a up again, to a
// alone; c never takes a connection while a priority-1 backend is up.
func TestPriorityBackupTakesOverAndGivesWay(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	backends := backendsOf(bed, false, 80, 1, 1, 1)
	backends[2].Priority = 2
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backends)}}
	all := names(bed, 3)
	a, bb, c := all[0], all[1], all[2]

	mustApply(t, b, s)
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 600, 8), []string{a, bb}, []int{1, 1})

	s.Farms[0].Backends[0].State = lb.Down
	s.Farms[0].Backends[1].State = lb.Down
	mustApply(t, b, s)
	if res := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 200, 8); res.Errors > 0 || res.Counts[c] != 200 {
		t.Errorf("priority 1 down: want every connection on %s, got %s", c, res)
	}

	s.Farms[0].Backends[0].State = lb.Up
	mustApply(t, b, s)
	if res := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 200, 8); res.Errors > 0 || res.Counts[a] != 200 {
		t.Errorf("%s back up: want every connection on it, got %s", a, res)
	}
}
