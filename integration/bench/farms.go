package main

import (
	"fmt"
	"net/netip"

	"github.com/l4nft/l4nft/lb"
)

// farm is one virtual service in the form every variant installs: clients
// connect to VIP:Port over TCP and are spread over Backends by weight; the
// balancer rewrites the destination to the backend and the source to VIP
// (NAT mode, as the seed's SNAT rules do).
type farm struct {
	Name     string
	VIP      netip.Addr
	Port     uint16
	Backends []backend
}

// backend is a real server of a farm.
type backend struct {
	Name   string
	Addr   netip.Addr
	Port   uint16
	Weight int
}

// portsPerVIP is how many farms share one VIP (on consecutive ports), so
// that 10,000 farms fit in 198.51.100.0/24.
const portsPerVIP = 50

// firstFarmPort is the port of the first farm on every VIP.
const firstFarmPort = 10000

// maxFarms is how many distinct VIP:port pairs farmService hands out.
const maxFarms = 250 * portsPerVIP * 20

// farmService returns the VIP and port of farm i: VIPs 198.51.100.1 to
// .250, portsPerVIP ports each, then the same VIPs on further port blocks.
// Farm i comes before farm i+1 in every linear rule list the suite builds,
// so the last farm is the one a linear walk reaches last.
func farmService(i int) (netip.Addr, uint16) {
	vips := 250
	block := i / (vips * portsPerVIP)
	j := i % (vips * portsPerVIP)
	vip := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + j/portsPerVIP)})
	return vip, uint16(firstFarmPort + block*portsPerVIP + j%portsPerVIP)
}

// makeFarms returns n farms, each served by the given backends; the
// backends' names are kept and their weights taken from weights (cycled).
func makeFarms(n int, backends []backend) []farm {
	if n > maxFarms {
		panic(fmt.Sprintf("makeFarms: %d farms, at most %d", n, maxFarms))
	}
	farms := make([]farm, n)
	for i := range farms {
		vip, port := farmService(i)
		farms[i] = farm{Name: farmName(i), VIP: vip, Port: port, Backends: backends}
	}
	return farms
}

// farmName sorts like the farm's index, so that l4nft's name order and the
// seed's rule order agree.
func farmName(i int) string { return fmt.Sprintf("f%06d", i) }

// wideFarms returns n farms of perFarm backends each, every backend with its
// own address:port (addresses 203.0.113.10 to .209, then further ports), for
// control-plane runs where no traffic flows.
func wideFarms(n, perFarm int) []farm {
	farms := makeFarms(n, nil)
	k := 0
	for i := range farms {
		bs := make([]backend, perFarm)
		for j := range bs {
			bs[j] = backend{
				Name:   fmt.Sprintf("b%d", j),
				Addr:   netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + k%200)}),
				Port:   uint16(1000 + k/200),
				Weight: 1,
			}
			k++
		}
		farms[i].Backends = bs
	}
	return farms
}

// lbState is the lb library's form of farms.
func lbState(farms []farm) lb.State {
	s := lb.State{Farms: make([]lb.Farm, len(farms))}
	for i, f := range farms {
		bs := make([]lb.Backend, len(f.Backends))
		for j, b := range f.Backends {
			bs[j] = lb.Backend{Name: b.Name, Address: b.Addr, Port: b.Port, Weight: b.Weight}
		}
		s.Farms[i] = lb.Farm{
			Name:     f.Name,
			Address:  f.VIP,
			Ports:    []lb.PortRange{lb.Port(f.Port)},
			Protocol: lb.TCP,
			Mode:     lb.NAT,
			Source:   f.VIP,
			Backends: bs,
		}
	}
	return s
}

// totalBackends counts the backends of all farms.
func totalBackends(farms []farm) int {
	n := 0
	for _, f := range farms {
		n += len(f.Backends)
	}
	return n
}
