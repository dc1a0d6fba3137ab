package lb

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/l4nft/l4nft/nft"
)

// readKernel learns what the kernel holds: the elements of every set, the
// farm chains, and from the elements' comments the State and the marks.
// It only reads.
func (b *Balancer) readKernel(ctx context.Context) error {
	table := b.opts.Table
	b.installed, b.rebuild, b.state, b.marks, b.nextMark = newRuleset(), true, State{}, map[backendKey]uint32{}, 0
	exists, err := b.conn.TableExists(table)
	if err != nil || !exists {
		return err
	}
	schema, err := b.conn.Elements(table, setSchema)
	if err != nil || len(schema) != 1 || schema[0].Comment != schemaComment(b.opts) {
		b.opts.Logger.Warn("table has another layout or options; the next apply replaces it", "table", table)
		return nil
	}
	inst := newRuleset()
	for _, s := range allSets {
		if err := ctx.Err(); err != nil {
			return err
		}
		elems, err := b.conn.Elements(table, s)
		if err != nil {
			return fmt.Errorf("adopting table %s: %w", table, err)
		}
		for _, e := range elems {
			inst.add(s, element{Element: e})
		}
	}
	chains, err := b.conn.Chains(table)
	if err != nil {
		return fmt.Errorf("adopting table %s: %w", table, err)
	}
	state, marks, err := stateFromElements(inst)
	if err != nil {
		b.opts.Logger.Warn("table's contents cannot be read back; the next apply replaces it", "table", table, "err", err)
		return nil
	}
	compiled := compile(state, b.opts, marks)
	inst.base = compiled.base
	for _, name := range chains {
		if !strings.HasPrefix(name, farmChainPrefix) {
			continue
		}
		// The farm chain holds what compile makes of the farm: every
		// change to it was made by a Balancer in one transaction with the
		// elements just read. A chain no farm names is deleted by the
		// next Apply.
		inst.farms[name] = compiled.farms[name]
	}
	b.installed, b.rebuild, b.state, b.marks = inst, false, state, marks
	for _, m := range marks {
		b.nextMark = max(b.nextMark, m>>b.opts.markShift())
	}
	return nil
}

// stateFromElements rebuilds the State and marks from the sets' elements.
func stateFromElements(r ruleset) (State, map[backendKey]uint32, error) {
	farms := map[string]*Farm{}
	protos := map[string]uint8{}
	for _, set := range []string{setServices4.Name, setServiceRanges4.Name, setServices6.Name, setServiceRanges6.Name} {
		for _, e := range r.elements[set] {
			kv := parseComment(e.Comment)
			name := kv["farm"]
			f := farms[name]
			if f == nil {
				f = &Farm{Name: name}
				var err error
				if f.Mode, err = ParseMode(kv["mode"]); err != nil {
					return State{}, nil, fmt.Errorf("farm %q: %w", name, err)
				}
				if f.Scheduler, err = ParseScheduler(kv["scheduler"]); err != nil {
					return State{}, nil, fmt.Errorf("farm %q: %w", name, err)
				}
				if src, ok := kv["source"]; ok {
					if f.Source, err = netip.ParseAddr(src); err != nil {
						return State{}, nil, fmt.Errorf("farm %q: %w", name, err)
					}
				}
				farms[name] = f
			}
			addr, proto, first, err := parseServiceKey(e.Key)
			if err != nil {
				return State{}, nil, fmt.Errorf("farm %q: %w", name, err)
			}
			last := first
			if len(e.KeyEnd) > 0 {
				if _, _, last, err = parseServiceKey(e.KeyEnd); err != nil {
					return State{}, nil, fmt.Errorf("farm %q: %w", name, err)
				}
			}
			f.Address = addr
			protos[name] |= protoBit(proto)
			if pr := (PortRange{first, last}); !slices.Contains(f.Ports, pr) {
				f.Ports = append(f.Ports, pr)
			}
		}
	}
	targets := map[string]nft.Element{}
	for _, set := range []string{setDNAT4.Name, setDNATAddr4.Name, setDNAT6.Name, setDNATAddr6.Name} {
		for id, e := range r.elements[set] {
			targets[id] = e.Element
		}
	}
	marks := map[backendKey]uint32{}
	for id, e := range r.elements[setBackends.Name] {
		kv := parseComment(e.Comment)
		farmName, name, _ := strings.Cut(kv["backend"], "/")
		f := farms[farmName]
		if f == nil {
			return State{}, nil, fmt.Errorf("backend %q: farm %q has no service", kv["backend"], farmName)
		}
		be := Backend{Name: name}
		var err error
		if be.Weight, err = strconv.Atoi(kv["weight"]); err != nil {
			return State{}, nil, fmt.Errorf("backend %q: weight: %w", kv["backend"], err)
		}
		if be.State, err = ParseBackendState(kv["state"]); err != nil {
			return State{}, nil, fmt.Errorf("backend %q: %w", kv["backend"], err)
		}
		t, ok := targets[id]
		if !ok {
			return State{}, nil, fmt.Errorf("backend %q has no dnat target", kv["backend"])
		}
		switch len(t.Value) {
		case 4, 16:
			be.Address, _ = netip.AddrFromSlice(t.Value)
		case 8, 20:
			be.Address, _ = netip.AddrFromSlice(t.Value[:len(t.Value)-4])
			be.Port = uint16(t.Value[len(t.Value)-4])<<8 | uint16(t.Value[len(t.Value)-3])
		default:
			return State{}, nil, fmt.Errorf("backend %q: dnat target of %d bytes", kv["backend"], len(t.Value))
		}
		f.Backends = append(f.Backends, be)
		marks[backendKey{farmName, name}] = nft.ParseMark(e.Key)
	}
	var s State
	for _, name := range sortedKeys(farms) {
		f := farms[name]
		switch protos[name] {
		case protoBit(protoUDP):
			f.Protocol = UDP
		case protoBit(protoTCP) | protoBit(protoUDP):
			f.Protocol = TCPUDP
		}
		slices.SortFunc(f.Ports, func(a, b PortRange) int { return int(a.First) - int(b.First) })
		slices.SortFunc(f.Backends, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
		s.Farms = append(s.Farms, *f)
	}
	return s, marks, nil
}

func protoBit(p uint8) uint8 {
	if p == protoTCP {
		return 1
	}
	return 2
}

// parseComment splits "k=v k=v" comments.
func parseComment(c string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(c) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	return kv
}

// parseServiceKey is the inverse of nft.ServiceKey.
func parseServiceKey(k []byte) (netip.Addr, uint8, uint16, error) {
	if len(k) != 12 && len(k) != 24 {
		return netip.Addr{}, 0, 0, fmt.Errorf("service key of %d bytes", len(k))
	}
	n := len(k) - 8
	addr, _ := netip.AddrFromSlice(k[:n])
	return addr, k[n], uint16(k[n+4])<<8 | uint16(k[n+5]), nil
}
