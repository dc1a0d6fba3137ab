package integration_test

import (
	"net/netip"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// spreadConnections is how many connections a split is judged on.
const spreadConnections = 3000

func TestNATModeSplitsByWeight(t *testing.T) {
	tests := []struct {
		name       string
		source     bool // SNAT to the VIP rather than masquerade
		wantSource func(bed *testbed.Topology) string
	}{
		{"masquerade", false, func(bed *testbed.Topology) string { return bed.Balancer.BackendAddr4.String() }},
		{"snat to vip", true, func(*testbed.Topology) string { return vip4.String() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{})
			b := mustOpen(t, bed, lb.Options{})
			f := farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 2))
			if tt.source {
				f.Source = vip4
			}
			mustApply(t, b, lb.State{Farms: []lb.Farm{f}})

			assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), spreadConnections, 16), names(bed, 2), []int{1, 2})

			r, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip4, 80))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := r.Source.Addr().String(), tt.wantSource(bed); got != want {
				t.Errorf("backend %s saw source %s, want %s", r.Backend, got, want)
			}
		})
	}
}

func TestDNATModeKeepsClientAddress(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	mustApply(t, b, lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.DNAT, backendsOf(bed, false, 80, 1, 1))}})
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 1000, 8), names(bed, 2), []int{1, 1})
	for range 20 {
		r, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip4, 80))
		if err != nil {
			t.Fatal(err)
		}
		// Replies reach the client because the balancer is the backends'
		// gateway: the reply is un-DNATed there and the client sees the VIP.
		if r.Source.Addr() != bed.Clients[0].Addr4 {
			t.Fatalf("backend %s saw source %s, want the client's %s", r.Backend, r.Source, bed.Clients[0].Addr4)
		}
	}
}

func TestFarmKinds(t *testing.T) {
	tests := []struct {
		name    string
		network string
		ports   []uint16 // served by the backends
		farm    func(bed *testbed.Topology) lb.Farm
		dst     func(bed *testbed.Topology) []testPoint
	}{
		{
			name: "udp", network: "udp", ports: []uint16{53},
			farm: func(bed *testbed.Topology) lb.Farm {
				f := farm("dns", vip4, 53, lb.NAT, backendsOf(bed, false, 53, 1, 3))
				f.Protocol = lb.UDP
				return f
			},
			dst: func(*testbed.Topology) []testPoint { return []testPoint{{ap(vip4, 53), []int{1, 3}}} },
		},
		{
			name: "ipv6", network: "tcp", ports: []uint16{443},
			farm: func(bed *testbed.Topology) lb.Farm {
				return farm("web6", vip6, 443, lb.NAT, backendsOf(bed, true, 443, 2, 1))
			},
			dst: func(*testbed.Topology) []testPoint { return []testPoint{{ap(vip6, 443), []int{2, 1}}} },
		},
		{
			name: "ipv6 dnat udp", network: "udp", ports: []uint16{53},
			farm: func(bed *testbed.Topology) lb.Farm {
				f := farm("dns6", vip6, 53, lb.DNAT, backendsOf(bed, true, 0, 1, 1))
				f.Protocol = lb.UDP
				return f
			},
			dst: func(*testbed.Topology) []testPoint { return []testPoint{{ap(vip6, 53), []int{1, 1}}} },
		},
		{
			name: "port range keeps the client's port", network: "tcp", ports: testbed.PortRange(8000, 8010),
			farm: func(bed *testbed.Topology) lb.Farm {
				f := farm("range", vip4, 0, lb.NAT, backendsOf(bed, false, 0, 1, 1))
				f.Ports = []lb.PortRange{{First: 8000, Last: 8010}}
				return f
			},
			dst: func(*testbed.Topology) []testPoint {
				return []testPoint{{ap(vip4, 8000), []int{1, 1}}, {ap(vip4, 8005), []int{1, 1}}, {ap(vip4, 8010), []int{1, 1}}}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{Ports: tt.ports})
			b := mustOpen(t, bed, lb.Options{})
			mustApply(t, b, lb.State{Farms: []lb.Farm{tt.farm(bed)}})
			for _, p := range tt.dst(bed) {
				assertSplit(t, spreadOf(t, bed.Clients[0], tt.network, p.dst, 1000, 8), names(bed, 2), p.weights)
			}
		})
	}
}

type testPoint struct {
	dst     netip.AddrPort
	weights []int
}

func TestSeveralFarmsAtOnce(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 4, Ports: []uint16{80, 443, 53}})
	b := mustOpen(t, bed, lb.Options{})
	all := backendsOf(bed, false, 0, 1, 1, 1, 1)
	all6 := backendsOf(bed, true, 0, 1, 1, 1, 1)
	dns := farm("dns", vip4, 53, lb.DNAT, all[2:4])
	dns.Protocol = lb.TCPUDP
	mustApply(t, b, lb.State{Farms: []lb.Farm{
		farm("web", vip4, 80, lb.NAT, all[0:2]),
		farm("tls", vip4, 443, lb.NAT, all[1:3]),
		dns,
		farm("web6", vip6, 80, lb.NAT, all6[0:1]),
	}})
	c := bed.Clients[0]
	ctx := testContext(t)
	n := names(bed, 4)
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 80), 400, 8), n[0:2], []int{1, 1})
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 443), 400, 8), n[1:3], []int{1, 1})
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 53), 400, 8), n[2:4], []int{1, 1})
	assertSplit(t, spreadOf(t, c, "udp", ap(vip4, 53), 400, 8), n[2:4], []int{1, 1})
	res := c.Spread(ctx, "tcp", ap(vip6, 80), 50, 4)
	if res.Errors > 0 || res.Counts[n[0]] != 50 {
		t.Errorf("web6 with one backend: %s, want all 50 on %s", res, n[0])
	}
}
