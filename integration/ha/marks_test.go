package ha

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/l4nft/l4nft/lb"
)

// TestMarksAgreeAcrossNodes: two nodes that reach one configuration by
// different sequences of changes (one directly; the other through farms
// and backends added, renamed away, removed and re-added, and a rebuild of
// its table) give every backend the same mark, so a conntrack entry synced
// from one node names the same backend on the other. Farm marks are
// logged: they may differ, and they never persist in conntrack.
func TestMarksAgreeAcrossNodes(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(name string) *lb.Balancer {
		ns := mustNamespace(t, name)
		b, err := lb.Open(ctx, lb.Options{NetNS: lb.NetNSFd(ns.Fd())})
		if err != nil {
			t.Fatalf("failed to open the balancer on %s: %v", name, err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	apply := func(b *lb.Balancer, farms ...lb.Farm) {
		t.Helper()
		if _, err := b.Apply(ctx, lb.State{Farms: farms}); err != nil {
			t.Fatalf("failed to apply: %v", err)
		}
	}
	be := func(name string, last byte, w int) lb.Backend {
		return lb.Backend{Name: name, Address: netip.AddrFrom4([4]byte{203, 0, 113, last}), Port: 8080, Weight: w}
	}
	mkFarm := func(name string, addr byte, backends ...lb.Backend) lb.Farm {
		return lb.Farm{Name: name, Address: netip.AddrFrom4([4]byte{198, 51, 100, addr}), Ports: []lb.PortRange{lb.Port(80)},
			Protocol: lb.TCPUDP, Source: netip.AddrFrom4([4]byte{198, 51, 100, addr}), Backends: backends}
	}
	final := []lb.Farm{
		mkFarm("web", 250, be("app0", 10, 1), be("app1", 11, 2), be("app2", 12, 3)),
		mkFarm("api", 251, be("api0", 20, 1), be("api1", 21, 1)),
	}

	a := open("A")
	apply(a, final...)

	b := open("B")
	apply(b, mkFarm("old", 249, be("x", 30, 1), be("y", 31, 1)))
	apply(b, mkFarm("old", 249, be("x", 30, 1), be("y", 31, 1)), mkFarm("web", 250, be("app2", 12, 3), be("tmp", 13, 1)))
	apply(b, mkFarm("web", 250, be("tmp", 13, 1), be("app2", 12, 1), be("app0", 10, 1)))
	apply(b, mkFarm("api", 251, be("api1", 21, 5)), mkFarm("web", 250, be("app2", 12, 3), be("app0", 10, 1), be("app1", 11, 2)))
	if err := b.Remove(ctx); err != nil { // a rebuild from nothing
		t.Fatalf("failed to remove B's table: %v", err)
	}
	apply(b, mkFarm("zzz", 248, be("z", 40, 1)), final[1], final[0])
	apply(b, final[1], final[0])

	marks := func(b *lb.Balancer) map[string]uint32 {
		st, err := b.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return backendMarks(st)
	}
	ma, mb := marks(a), marks(b)
	if len(ma) != 5 {
		t.Fatalf("A reports %d backends, want 5: %v", len(ma), ma)
	}
	if diff := cmp.Diff(ma, mb); diff != "" {
		t.Errorf("backend marks differ between nodes (-A +B):\n%s", diff)
	}
	t.Logf("backend marks on both nodes: %s", fmtMarks(ma))
}

func fmtMarks(m map[string]uint32) string {
	s := ""
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s += fmt.Sprintf("%s=%#x ", k, m[k])
	}
	return s
}
