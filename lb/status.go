package lb

import (
	"context"
	"fmt"

	"github.com/l4nft/l4nft/nft"
)

// Status is the installed state with live counters.
type Status struct {
	Farms []FarmStatus `json:"farms"`
}

// FarmStatus is a farm with its backends' counters.
type FarmStatus struct {
	Farm
	Backends []BackendStatus `json:"backends"`
	// Connections, Packets and Bytes add up the backends'.
	Connections uint64 `json:"connections"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
}

// BackendStatus is a backend with its counters. Counters start at zero
// when the backend is created and count for as long as it exists.
type BackendStatus struct {
	Backend
	// Mark is the conntrack mark of the backend's connections.
	Mark uint32 `json:"mark"`
	// Connections counts new connections sent to the backend.
	Connections uint64 `json:"connections"`
	// Packets and Bytes count traffic of its connections in both directions
	// as it passes through the balancer.
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Status reads the counters from the kernel. It costs one dump per set
// involved, proportional to the number of backends. The dumps go over a
// socket of their own and hold no lock that Apply takes: a scrape never
// delays a change.
func (b *Balancer) Status(ctx context.Context) (Status, error) {
	b.mu.Lock()
	state, rebuild := b.state(), b.rebuild
	marks := make(map[objectKey]uint32, len(b.marks.owner))
	for k, m := range b.marks.owner {
		marks[k] = m
	}
	b.mu.Unlock()
	type counters struct{ conns, packets, bytes uint64 }
	byMark := map[uint32]*counters{}
	get := func(m uint32) *counters {
		if byMark[m] == nil {
			byMark[m] = &counters{}
		}
		return byMark[m]
	}
	if !rebuild {
		for _, s := range []nft.Set{setDNAT4, setDNATAddr4, setDNAT6, setDNATAddr6, setTraffic} {
			if err := ctx.Err(); err != nil {
				return Status{}, err
			}
			elems, err := b.stats.Elements(b.opts.Table, s)
			if err != nil {
				return Status{}, fmt.Errorf("reading counters: %w", err)
			}
			for _, e := range elems {
				c := get(nft.ParseMark(e.Key))
				if s.Name == setTraffic.Name {
					c.packets, c.bytes = e.Packets, e.Bytes
				} else {
					c.conns = e.Packets // the dnat lookup runs once per connection
				}
			}
		}
	}
	var st Status
	for _, f := range state.Farms {
		fs := FarmStatus{Farm: f}
		fs.Farm.Backends = nil
		for _, be := range f.Backends {
			m := marks[objectKey{f.Name, be.Name}]
			c := get(m)
			fs.Backends = append(fs.Backends, BackendStatus{Backend: be, Mark: m, Connections: c.conns, Packets: c.packets, Bytes: c.bytes})
			fs.Connections += c.conns
			fs.Packets += c.packets
			fs.Bytes += c.bytes
		}
		st.Farms = append(st.Farms, fs)
	}
	return st, nil
}
