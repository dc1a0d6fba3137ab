package integration_test

import (
	"net/netip"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// The rendered text, loaded with nft -f into a fresh namespace, balances
// like the ruleset Apply installs.
func TestRenderedTextBalancesTheSame(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3, Ports: []uint16{80, 53}})
	s := lb.State{Farms: []lb.Farm{
		farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 2, 3)),
		farm("web6", vip6, 80, lb.DNAT, backendsOf(bed, true, 0, 3, 1)),
	}}
	dns := farm("dns", vip4, 53, lb.NAT, backendsOf(bed, false, 53, 1, 1))
	dns.Protocol = lb.UDP
	dns.Source = vip4
	s.Farms = append(s.Farms, dns)
	// A farm of every protocol, on an address of its own.
	vipAll := netip.MustParseAddr("198.51.100.251")
	s.Farms = append(s.Farms, allProtocols("rest", vipAll, lb.NAT, backendsOf(bed, false, 0, 1, 1)))

	text, err := lb.Render(s, lb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	runNft(t, bed.Balancer.Namespace, []byte(text), "-f", "-")

	c := bed.Clients[0]
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 80), spreadConnections, 16), names(bed, 3), []int{1, 2, 3})
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip6, 80), 1000, 8), names(bed, 2), []int{3, 1})
	assertSplit(t, spreadOf(t, c, "udp", ap(vip4, 53), 1000, 8), names(bed, 2), []int{1, 1})
	assertSplit(t, spreadOf(t, c, "tcp", ap(vipAll, 80), 600, 8), names(bed, 2), []int{1, 1})
	assertSplit(t, spreadOf(t, c, "udp", ap(vipAll, 53), 600, 8), names(bed, 2), []int{1, 1})
	if r, err := c.Ask(testContext(t), "udp", ap(vip4, 53)); err != nil || r.Source.Addr() != vip4 {
		t.Errorf("udp farm with source %s: backend saw %v (%v)", vip4, r.Source, err)
	}

	// nft stores the schedule as a concatenation (see lb.Render): lb sees
	// another layout and replaces the table in one transaction.
	b := mustOpen(t, bed, lb.Options{})
	if res := mustApply(t, b, s); !res.Rebuilt {
		t.Errorf("lb adopted an nft -f table as its own: %+v", res)
	}
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 80), spreadConnections, 16), names(bed, 3), []int{1, 2, 3})
}
