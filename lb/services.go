package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// service is one address . protocol . port.
type service struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

// addrProto is the address and protocol of a port range.
type addrProto struct {
	addr  netip.Addr
	proto uint8
}

// portClaim is a farm's claim on a range of ports.
type portClaim struct {
	ports PortRange
	farm  string
}

// serviceIndex says which installed farm serves each service, so that a
// farm set alone (SetFarm) is checked against the others in proportion to
// its own services rather than to all of them.
type serviceIndex struct {
	exact  map[service]string
	ranges map[addrProto][]portClaim
	// every is the farm of protocol all on each address. It does not
	// clash with the farms of ports on the same address, which take
	// precedence for theirs.
	every map[netip.Addr]string
}

func (x *serviceIndex) add(f Farm) {
	if x.exact == nil {
		x.exact, x.ranges, x.every = map[service]string{}, map[addrProto][]portClaim{}, map[netip.Addr]string{}
	}
	addr := f.Address.Unmap()
	if f.Protocol == AllProtocols {
		x.every[addr] = f.Name
	}
	for _, proto := range f.Protocol.numbers() {
		for _, r := range f.Ports {
			if r.First == r.Last {
				x.exact[service{addr, proto, r.First}] = f.Name
			} else {
				k := addrProto{addr, proto}
				x.ranges[k] = append(x.ranges[k], portClaim{r, f.Name})
			}
		}
	}
}

func (x *serviceIndex) remove(f Farm) {
	addr := f.Address.Unmap()
	if f.Protocol == AllProtocols && x.every[addr] == f.Name {
		delete(x.every, addr)
	}
	for _, proto := range f.Protocol.numbers() {
		for _, r := range f.Ports {
			if r.First == r.Last {
				if x.exact[service{addr, proto, r.First}] == f.Name {
					delete(x.exact, service{addr, proto, r.First})
				}
				continue
			}
			k := addrProto{addr, proto}
			claims := x.ranges[k][:0]
			for _, c := range x.ranges[k] {
				if c.farm != f.Name {
					claims = append(claims, c)
				}
			}
			if len(claims) == 0 {
				delete(x.ranges, k)
			} else {
				x.ranges[k] = claims
			}
		}
	}
}

// owner returns another farm than f that serves a port of r on addr and
// proto, and the ports it claims.
func (x *serviceIndex) owner(f string, addr netip.Addr, proto uint8, r PortRange) (string, PortRange, bool) {
	for _, c := range x.ranges[addrProto{addr, proto}] {
		if c.farm != f && c.ports.First <= r.Last && r.First <= c.ports.Last {
			return c.farm, c.ports, true
		}
	}
	if len(x.exact) == 0 {
		return "", PortRange{}, false
	}
	for p := int(r.First); p <= int(r.Last); p++ {
		if o, ok := x.exact[service{addr, proto, uint16(p)}]; ok && o != f {
			return o, Port(uint16(p)), true
		}
	}
	return "", PortRange{}, false
}

// validateFarm checks one farm as Validate would check it within the
// installed State: alone, then its services against the other farms',
// then the marks it needs.
func (b *Balancer) validateFarm(f Farm) error {
	err := Validate(State{Farms: []Farm{f}}, b.opts)
	v := validator{}
	if ve, ok := err.(*ValidationError); ok {
		v.problems = ve.Problems
	} else if err != nil {
		return err
	}
	if f.Address.IsValid() && f.Protocol == AllProtocols {
		if o, ok := b.services.every[f.Address.Unmap()]; ok && o != f.Name {
			v.add(Problem{Farm: f.Name, BackendIndex: -1, Field: "address",
				Message: fmt.Sprintf("%s protocol all is already served by farm %q", f.Address, o)})
		}
	}
	if f.Address.IsValid() && protocols.ok(f.Protocol) {
		for _, proto := range f.Protocol.numbers() {
			for _, r := range f.Ports {
				if r.First == 0 || r.Last < r.First {
					continue
				}
				if o, ports, ok := b.services.owner(f.Name, f.Address.Unmap(), proto, r); ok {
					v.add(Problem{Farm: f.Name, BackendIndex: -1, Field: "ports",
						Message: fmt.Sprintf("%s %s port %s is already served by farm %q port %s",
							f.Address, protoName(proto), r, o, ports)})
				}
			}
		}
	}
	need := 1 + len(f.Backends)
	if old := b.farms[f.Name]; old != nil {
		need -= 1 + len(old.spec.Backends)
	}
	if free := b.opts.MaxMarks() - len(b.marks.used) - 1; need > free { // one spare: see Validate
		v.add(Problem{FarmIndex: -1, BackendIndex: -1, Field: "farms",
			Message: fmt.Sprintf("farm %q needs %d more marks, but mark mask %s has %d left; widen Options.MarkMask",
				f.Name, need, markText(b.opts.MarkMask), free)})
	}
	return v.err()
}

// scheduleFarm returns the farm mark of a schedule element's key.
func scheduleFarm(key []byte) uint32 { return binary.BigEndian.Uint32(key) }
