package integration_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// 10,000 backends go in one apply, and every element is in the kernel: the
// element lists are chunked below the size at which the kernel would
// silently truncate them.
func TestTenThousandBackendsInOneApply(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	const farms, perFarm = 100, 100
	var s lb.State
	for i := range farms {
		f := lb.Farm{Name: fmt.Sprintf("f%03d", i), Address: vip4, Ports: []lb.PortRange{lb.Port(uint16(10000 + i))}}
		for j := range perFarm {
			f.Backends = append(f.Backends, lb.Backend{
				Name:    fmt.Sprintf("b%03d", j),
				Address: netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + j%2)}),
				Port:    80, Weight: 1 + j%7,
			})
		}
		s.Farms = append(s.Farms, f)
	}
	res := mustApply(t, b, s)
	t.Logf("10,000 backends: %+v", res)

	conn, err := nft.Open(nft.NetNSFd(bed.Balancer.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, set := range []string{"dnat4", "traffic", "backends", "masq_backends"} {
		elems, err := conn.Elements("l4nft", nft.Set{Name: set})
		if err != nil {
			t.Fatal(err)
		}
		if len(elems) != farms*perFarm {
			t.Errorf("set %s holds %d elements, want %d", set, len(elems), farms*perFarm)
		}
	}
	// A second process reads all of it back.
	b2 := mustOpen(t, bed, lb.Options{})
	n := 0
	for _, f := range b2.State().Farms {
		n += len(f.Backends)
	}
	if n != farms*perFarm {
		t.Errorf("adopted %d backends, want %d", n, farms*perFarm)
	}
	if res := mustApply(t, b2, s); res.Changed {
		t.Errorf("re-applying after adoption sent %d messages", res.Messages)
	}
	// And the last farm balances.
	last := s.Farms[farms-1]
	last.Backends = backendsOf(bed, false, 80, 1, 1)
	s.Farms[farms-1] = last
	mustApply(t, b2, s)
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, last.Ports[0].First), 400, 8), names(bed, 2), []int{1, 1})
}
