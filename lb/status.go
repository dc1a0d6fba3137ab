package lb

import (
	"context"
	"fmt"
	"slices"

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
	// PersistenceEntries is the number of clients persistence remembers
	// (live entries of the farm's persistence map); 0 without persistence.
	PersistenceEntries uint64 `json:"persistence_entries,omitempty"`
	// Rejected counts the new connections the farm's limits, lists and
	// tcp_strict refused, by reason.
	Rejected Rejections `json:"rejected,omitzero"`
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
	// The skeleton, with every backend's mark, under the lock; the
	// counters after it.
	b.mu.Lock()
	rebuild := b.rebuild
	st := Status{Farms: make([]FarmStatus, 0, len(b.order))}
	byMark := map[uint32]*BackendStatus{}
	// The farms with a lasting id, by it; the persistence maps in use.
	lasting := map[uint32]int{}
	persisting := map[uint32]int{}
	strictFarms := map[string]int{} // by service key
	var persistMaps []nft.Set
	for _, name := range b.order {
		f := b.farms[name].spec
		if id := b.marks.owner[idKey(name)]; id != 0 {
			lasting[id] = len(st.Farms)
		}
		if f.TCPStrict {
			// A counter dump carries keys, not comments: the farm is
			// found by the services its elements are keyed by.
			for _, proto := range f.Protocol.numbers() {
				for _, p := range f.Ports {
					strictFarms[string(nft.ServiceKey(f.Address, proto, p.First))] = len(st.Farms)
				}
			}
		}
		if p := f.Persistence; p != nil {
			persisting[b.marks.owner[idKey(name)]] = len(st.Farms)
			if s := persistSet(nft.FamilyOf(f.Address), p.By); !slices.Contains(persistMaps, s) {
				persistMaps = append(persistMaps, s)
			}
		}
		fs := FarmStatus{Farm: f, Backends: make([]BackendStatus, len(f.Backends))}
		fs.Farm.Ports = slices.Clone(f.Ports)
		fs.Farm.Backends = nil
		for i, be := range f.Backends {
			fs.Backends[i] = BackendStatus{Backend: be, Mark: b.marks.owner[objectKey{f.Name, be.Name}]}
		}
		st.Farms = append(st.Farms, fs)
	}
	for fi := range st.Farms {
		for bi := range st.Farms[fi].Backends {
			bs := &st.Farms[fi].Backends[bi]
			byMark[bs.Mark] = bs
		}
	}
	b.mu.Unlock()
	if !rebuild {
		for _, s := range []nft.Set{setDNAT4, setDNATAddr4, setDNAT6, setDNATAddr6, setTraffic} {
			if err := ctx.Err(); err != nil {
				return Status{}, err
			}
			elems, err := b.stats.Counters(b.opts.Table, s)
			if err != nil {
				return Status{}, fmt.Errorf("reading counters: %w", err)
			}
			for _, e := range elems {
				bs := byMark[nft.ParseMark(e.Key)]
				switch {
				case bs == nil:
				case s.Name == setTraffic.Name:
					bs.Packets, bs.Bytes = e.Packets, e.Bytes
				default:
					bs.Connections = e.Packets // the dnat lookup runs once per connection
				}
			}
		}
	}
	if !rebuild && len(lasting) > 0 {
		elems, err := b.stats.Counters(b.opts.Table, setRejects)
		if err != nil {
			return Status{}, fmt.Errorf("reading rejections: %w", err)
		}
		for _, e := range elems {
			if fi, ok := lasting[nft.ParseMark(e.Key)]; ok && len(e.Key) == 8 {
				st.Farms[fi].Rejected.add(rejectReason(nft.ParseMark(e.Key[4:])), e.Packets)
			}
		}
	}
	if !rebuild && len(strictFarms) > 0 {
		for _, set := range []nft.Set{setStrict4, setStrictRanges4, setStrict6, setStrictRanges6} {
			elems, err := b.stats.Counters(b.opts.Table, set)
			if err != nil {
				return Status{}, fmt.Errorf("reading tcp_strict drops: %w", err)
			}
			for _, e := range elems {
				if fi, ok := strictFarms[string(e.Key)]; ok {
					st.Farms[fi].Rejected.Invalid += e.Packets
				}
			}
		}
	}
	// Each map in use is read once, in proportion to its live entries.
	for _, s := range persistMaps {
		if rebuild {
			break
		}
		elems, err := b.stats.Elements(b.opts.Table, s)
		if err != nil {
			return Status{}, fmt.Errorf("reading persistence entries: %w", err)
		}
		for _, e := range elems {
			if fi, ok := persisting[nft.ParseMark(e.Key)]; ok {
				st.Farms[fi].PersistenceEntries++
			}
		}
	}
	for fi := range st.Farms {
		fs := &st.Farms[fi]
		for _, bs := range fs.Backends {
			fs.Connections += bs.Connections
			fs.Packets += bs.Packets
			fs.Bytes += bs.Bytes
		}
	}
	return st, nil
}
