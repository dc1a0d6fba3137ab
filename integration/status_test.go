package integration_test

import (
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// Status counts, per backend, the new connections it was given and the
// packets and bytes of its connections; a weight change does not reset
// the counters.
func TestStatusCounters(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
	mustApply(t, b, s)
	res := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 100, 4)
	if res.Errors > 0 {
		t.Fatalf("traffic failed: %s", res)
	}
	s.Farms[0].Backends[0].Weight = 3
	mustApply(t, b, s)
	res2 := bed.Clients[0].Spread(testContext(t), "tcp", ap(vip4, 80), 100, 4)
	if res2.Errors > 0 {
		t.Fatalf("traffic failed: %s", res2)
	}

	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Farms) != 1 || len(st.Farms[0].Backends) != 2 {
		t.Fatalf("Status() = %+v, want one farm of two backends", st)
	}
	for _, be := range st.Farms[0].Backends {
		want := uint64(res.Counts[be.Name] + res2.Counts[be.Name])
		if be.Connections != want {
			t.Errorf("%s: %d connections counted, %d made", be.Name, be.Connections, want)
		}
		// A connection is at least a handshake, a greeting and a close:
		// well over 4 packets through the balancer.
		if be.Packets < 4*want || be.Bytes < 40*be.Packets {
			t.Errorf("%s: %d packets, %d bytes for %d connections", be.Name, be.Packets, be.Bytes, want)
		}
		if be.Mark == 0 {
			t.Errorf("%s: no mark", be.Name)
		}
	}
	if f := st.Farms[0]; f.Connections != 200 {
		t.Errorf("farm counted %d connections, want 200", f.Connections)
	}
}
