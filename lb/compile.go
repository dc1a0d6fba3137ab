package lb

import (
	"cmp"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/l4nft/l4nft/nft"
)

// objectKey names a mark owner across applies: a farm (backend "") or one
// of its backends.
type objectKey struct{ farm, backend string }

func (k objectKey) String() string {
	if k.backend == "" {
		return k.farm
	}
	return k.farm + "/" + k.backend
}

func markText(m uint32) string { return fmt.Sprintf("0x%08x", m) }

// markGetter looks marks up: a *marks view, or a plain map.
type markGetter interface{ get(objectKey) uint32 }

// markMap is a markGetter over a map.
type markMap map[objectKey]uint32

func (m markMap) get(k objectKey) uint32 { return m[k] }

// compiledFarm is what one farm puts in the kernel: elements only.
type compiledFarm struct {
	// spec is the farm it was compiled from.
	spec Farm
	// dirty says the kernel's elements may not be what spec compiles to
	// (read back from a table whose contents disagree); the next Apply
	// diffs the farm whatever its spec.
	dirty    bool
	elements elements
	// chain is the farm's own chain, for options that per-farm values in
	// rules express (see needsChain); nil for most farms.
	chain *chain
}

func (c *compiledFarm) add(s nft.Set, e element) {
	c.elements[s.Name] = append(c.elements[s.Name], e)
}

// farmComment records the farm's options for adoption; id is the farm's
// lasting id, 0 if it has none.
func farmComment(f Farm, id uint32) string {
	c := fmt.Sprintf("farm=%s mode=%s scheduler=%s", f.Name, f.Mode, f.Scheduler)
	if f.Source.IsValid() {
		c += " source=" + f.Source.Unmap().String()
	}
	if len(f.HashFields) > 0 {
		names := make([]string, len(f.HashFields))
		for i, h := range f.HashFields {
			names[i] = h.String()
		}
		c += " hash=" + strings.Join(names, ",")
	}
	if f.Slots != 0 {
		c += fmt.Sprintf(" slots=%d", f.Slots)
	}
	if p := f.Persistence; p != nil {
		c += fmt.Sprintf(" persist=%s/%s", p.By, p.TTL)
	}
	if l := f.Limits; l != nil {
		c += fmt.Sprintf(" limits=%d/%d/%d/%d/%s", l.NewPerSecond, l.Burst, l.NewPerClientPerSecond, l.EstablishedPerClient, l.Action)
	}
	if f.TCPStrict {
		c += " strict=true"
	}
	if len(f.Helpers) > 0 {
		names := make([]string, len(f.Helpers))
		for i, h := range f.Helpers {
			names[i] = h.String()
		}
		c += " helpers=" + strings.Join(names, ",")
	}
	if id != 0 {
		c += " id=" + markText(id)
	}
	return c
}

func backendComment(f Farm, b Backend) string {
	c := fmt.Sprintf("backend=%s/%s weight=%d state=%s", f.Name, b.Name, b.Weight, b.State)
	if b.Priority != 0 {
		c += fmt.Sprintf(" priority=%d", b.Priority)
	}
	if b.MaxConnections != 0 {
		c += fmt.Sprintf(" max_connections=%d", b.MaxConnections)
	}
	return c
}

// compileFarm turns a valid farm into its elements. marks holds the mark
// of the farm and of each of its backends. Only Render needs the elements'
// nft syntax (text), which costs more than the rest.
func compileFarm(f Farm, marks markGetter, mask uint32, text bool) *compiledFarm {
	shift := bits.TrailingZeros32(mask)
	c := &compiledFarm{spec: f.Clone(), elements: elements{}}
	addr := f.Address.Unmap()
	fam := nft.FamilyOf(addr)
	id := marks.get(objectKey{f.Name, ""})
	comment := "farm=" + f.Name
	textf := func(format string, args ...any) string {
		if !text {
			return ""
		}
		return fmt.Sprintf(format, args...)
	}

	// Services: every address . protocol . port of the farm names it, or
	// for a farm of every protocol, its address.
	exact, ranges, byAddr := setServices4, setServiceRanges4, setServicesAddr4
	dnat, dnatAddr, snat := setDNAT4, setDNATAddr4, setSNAT4
	if fam == nft.IPv6 {
		exact, ranges, byAddr = setServices6, setServiceRanges6, setServicesAddr6
		dnat, dnatAddr, snat = setDNAT6, setDNATAddr6, setSNAT6
	}
	// Sized first: with 100 backends a farm's lists grew by copying more
	// than anything else in an install.
	n := len(f.Backends)
	for _, set := range []nft.Set{dnat, dnatAddr, snat, setMasquerade, setTraffic, setBackends} {
		c.elements[set.Name] = make([]element, 0, n)
	}
	c.elements[shardOf(id, shift).Name] = make([]element, 0, 2*n)
	strict, strictRanges := setStrict4, setStrictRanges4
	if fam == nft.IPv6 {
		strict, strictRanges = setStrict6, setStrictRanges6
	}
	for _, proto := range f.Protocol.numbers() {
		for _, p := range f.Ports {
			e := element{Element: nft.Element{Key: nft.ServiceKey(addr, proto, p.First), Value: nft.Mark(id), Comment: comment}}
			e.text = textf("%s . %s . %s comment %q : %s", addr, protoName(proto), p, comment, markText(id))
			// tcp_strict's sets hold the same services, with counters.
			s := element{Element: nft.Element{Key: e.Key, Comment: comment}, text: textf("%s . %s . %s comment %q", addr, protoName(proto), p, comment)}
			if p.First == p.Last {
				c.add(exact, e)
				if f.TCPStrict {
					c.add(strict, s)
				}
				continue
			}
			e.KeyEnd = nft.ServiceKey(addr, proto, p.Last)
			c.add(ranges, e)
			if f.TCPStrict {
				s.KeyEnd = e.KeyEnd
				c.add(strictRanges, s)
			}
		}
	}
	if f.Protocol == AllProtocols {
		c.add(byAddr, element{
			Element: nft.Element{Key: addr.AsSlice(), Value: nft.Mark(id), Comment: comment},
			text:    textf("%s comment %q : %s", addr, comment, markText(id)),
		})
	}

	lasting := marks.get(idKey(f.Name))
	fc := farmComment(f, lasting)
	c.add(setFarms, element{
		Element: nft.Element{Key: nft.Mark(id), Comment: fc},
		text:    textf("%s comment %q", markText(id), fc),
	})

	var up []Backend
	for _, b := range f.Backends {
		m := marks.get(objectKey{f.Name, b.Name})
		mt := markText(m)
		key := nft.Mark(m)
		baddr := b.Address.Unmap()
		// Only the backends map's elements carry the backend's name: the
		// counted maps are read on every scrape, and a dump costs the
		// kernel in proportion to its size in bytes.
		if b.Port != 0 {
			c.add(dnat, element{
				Element: nft.Element{Key: key, Value: targetValue(baddr, b.Port)},
				text:    textf("%s : %s . %d", mt, baddr, b.Port),
			})
		} else {
			c.add(dnatAddr, element{
				Element: nft.Element{Key: key, Value: baddr.AsSlice()},
				text:    textf("%s : %s", mt, baddr),
			})
		}
		if f.Mode == NAT {
			if f.Source.IsValid() {
				src := f.Source.Unmap()
				c.add(snat, element{
					Element: nft.Element{Key: key, Value: src.AsSlice()},
					text:    textf("%s : %s", mt, src),
				})
			} else {
				c.add(setMasquerade, element{Element: nft.Element{Key: key}, text: textf("%s", mt)})
			}
		}
		c.add(setTraffic, element{Element: nft.Element{Key: key}, text: textf("%s", mt)})
		bc := backendComment(f, b)
		c.add(setBackends, element{Element: nft.Element{Key: key, Comment: bc}, text: textf("%s comment %q", mt, bc)})
		if b.State == Up {
			up = append(up, b)
		}
	}
	// Only the best priority that has an available backend takes new
	// connections.
	if len(up) > 0 {
		best := slices.MinFunc(up, func(x, y Backend) int { return cmp.Compare(x.priority(), y.priority()) }).priority()
		up = slices.DeleteFunc(up, func(x Backend) bool { return x.priority() != best })
	}

	// Schedule: each available backend owns runs of the farm's slots, laid
	// out by the scheduler from the backends in name order, so that the
	// order of State.Backends does not matter.
	slices.SortFunc(up, func(x, y Backend) int { return cmp.Compare(x.Name, y.Name) })
	schedule := shardOf(id, shift)
	var space uint32
	if f.Scheduler == Consistent {
		m, table := consistentTable(f, up)
		space = uint32(m)
		for slot, bi := range table {
			bm := marks.get(objectKey{f.Name, up[bi].Name})
			c.add(consistentOf(lasting, shift), element{
				Element: nft.Element{Key: nft.PairKey(lasting, uint32(slot)), Value: nft.Mark(bm)},
				text:    textf("%s . %d : %s", markText(lasting), slot, markText(bm)),
			})
		}
	} else {
		var runs []slotRun
		space, runs = layout(f, up)
		for _, r := range runs {
			b := up[r.backend]
			m := marks.get(objectKey{f.Name, b.Name})
			name := f.Name + "/" + b.Name
			c.add(schedule, element{
				Element: nft.Element{Key: nft.ScheduleKey(id, r.lo), Value: nft.Mark(m), Comment: name},
				text:    textf("%s . %d-%d comment %q : %s", markText(id), r.lo, r.hi-1, name, markText(m)),
			})
			c.add(schedule, element{Element: nft.Element{Key: nft.ScheduleKey(id, r.hi), IntervalEnd: true}})
		}
	}
	for _, r := range reasons(f) {
		c.add(setRejects, element{
			Element: nft.Element{Key: nft.PairKey(lasting, uint32(r))},
			text:    textf("%s . %d comment %q", markText(lasting), r, reasonNames[r]),
		})
	}
	allow, deny := setAllow4, setDeny4
	if fam == nft.IPv6 {
		allow, deny = setAllow6, setDeny6
	}
	if len(f.Allow) > 0 {
		c.elements[allow.Name] = listElements(lasting, f.Allow, textf)
	}
	if len(f.Deny) > 0 {
		c.elements[deny.Name] = listElements(lasting, f.Deny, textf)
	}
	if needsChain(f) {
		fm := farmMarks{farm: id, lasting: lasting, mask: mask, backends: map[string]uint32{}}
		for _, b := range f.Backends {
			if b.MaxConnections > 0 {
				fm.backends[b.Name] = marks.get(objectKey{f.Name, b.Name})
			}
		}
		c.chain = farmChain(f, fm, schedule, consistentOf(lasting, shift), space, text)
		c.add(setFarmChains, element{
			Element: nft.Element{Key: nft.Mark(id), Jump: c.chain.Name},
			text:    textf("%s : jump %s", markText(id), c.chain.Name),
		})
		if f.Persistence != nil {
			for _, b := range up {
				m := marks.get(objectKey{f.Name, b.Name})
				c.add(setPersistOK, element{
					Element: nft.Element{Key: nft.PairKey(id, m)},
					text:    textf("%s . %s", markText(id), markText(m)),
				})
			}
		}
	}
	return c
}

// apportion splits slots among weights in proportion, by largest
// remainder, giving every weight at least one slot.
func apportion(weights []int, slots int) []uint32 {
	total := 0
	for _, w := range weights {
		total += w
	}
	out := make([]uint32, len(weights))
	if total == 0 {
		return out
	}
	type rem struct {
		i int
		r int
	}
	rems := make([]rem, len(weights))
	given := 0
	for i, w := range weights {
		q := slots * w
		out[i] = uint32(q / total)
		given += int(out[i])
		rems[i] = rem{i, q % total}
	}
	slices.SortStableFunc(rems, func(a, b rem) int { return cmp.Compare(b.r, a.r) })
	for k := 0; given < slots; k++ {
		out[rems[k%len(rems)].i]++
		given++
	}
	for i := range out {
		if out[i] == 0 { // take a slot from the largest share
			j := slices.Index(out, slices.Max(out))
			out[j]--
			out[i]++
		}
	}
	return out
}

// targetValue is the data of a dnat map element: address . port.
func targetValue(addr netip.Addr, port uint16) []byte {
	a := addr.AsSlice()
	v := make([]byte, len(a)+4)
	copy(v, a)
	v[len(a)], v[len(a)+1] = byte(port>>8), byte(port)
	return v
}
