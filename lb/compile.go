package lb

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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
}

func (c *compiledFarm) add(s nft.Set, e element) {
	c.elements[s.Name] = append(c.elements[s.Name], e)
}

func farmComment(f Farm) string {
	c := fmt.Sprintf("farm=%s mode=%s scheduler=%s", f.Name, f.Mode, f.Scheduler)
	if f.Source.IsValid() {
		c += " source=" + f.Source.Unmap().String()
	}
	return c
}

func backendComment(f Farm, b Backend) string {
	return fmt.Sprintf("backend=%s/%s weight=%d state=%s", f.Name, b.Name, b.Weight, b.State)
}

// compileFarm turns a valid farm into its elements. marks holds the mark
// of the farm and of each of its backends. Only Render needs the elements'
// nft syntax (text), which costs more than the rest.
func compileFarm(f Farm, marks markGetter, shift int, text bool) *compiledFarm {
	c := &compiledFarm{spec: cloneFarm(f), elements: elements{}}
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

	// Services: every address . protocol . port of the farm names it.
	exact, ranges := setServices4, setServiceRanges4
	dnat, dnatAddr, snat := setDNAT4, setDNATAddr4, setSNAT4
	if fam == nft.IPv6 {
		exact, ranges = setServices6, setServiceRanges6
		dnat, dnatAddr, snat = setDNAT6, setDNATAddr6, setSNAT6
	}
	for _, proto := range f.Protocol.numbers() {
		for _, p := range f.Ports {
			e := element{Element: nft.Element{Key: nft.ServiceKey(addr, proto, p.First), Value: nft.Mark(id), Comment: comment}}
			e.text = textf("%s . %s . %s comment %q : %s", addr, protoName(proto), p, comment, markText(id))
			if p.First == p.Last {
				c.add(exact, e)
				continue
			}
			e.KeyEnd = nft.ServiceKey(addr, proto, p.Last)
			c.add(ranges, e)
		}
	}

	c.add(setFarms, element{
		Element: nft.Element{Key: nft.Mark(id), Comment: farmComment(f)},
		text:    textf("%s comment %q", markText(id), farmComment(f)),
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

	// Schedule: each available backend owns a range of the farm's slots,
	// in name order so that the order of State.Backends does not matter.
	slices.SortFunc(up, func(x, y Backend) int { return cmp.Compare(x.Name, y.Name) })
	weights := make([]int, len(up))
	for i, b := range up {
		weights[i] = b.Weight
	}
	lo := uint32(0)
	schedule := shardOf(id, shift)
	for i, n := range apportion(weights, scheduleSlots) {
		b := up[i]
		m := marks.get(objectKey{f.Name, b.Name})
		hi := lo + n // exclusive
		name := f.Name + "/" + b.Name
		c.add(schedule, element{
			Element: nft.Element{Key: nft.ScheduleKey(id, lo), Value: nft.Mark(m), Comment: name},
			text:    textf("%s . %d-%d comment %q : %s", markText(id), lo, hi-1, name, markText(m)),
		})
		c.add(schedule, element{Element: nft.Element{Key: nft.ScheduleKey(id, hi), IntervalEnd: true}})
		lo = hi
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

// shardElements are the elements of the schedule_shards verdict map: the
// mark bits that pick a schedule map -> the chain that looks it up.
func shardElements(o Options) []element {
	n, _ := o.shards()
	out := make([]element, n)
	for i := range out {
		k := uint32(i) << o.markShift()
		ch := chainSchedule + scheduleSets[i].Name
		out[i] = element{Element: nft.Element{Key: nft.Mark(k), Jump: ch}, text: fmt.Sprintf("%s : jump %s", markText(k), ch)}
	}
	return out
}

// schemaElement is the one element of the schema set.
func schemaElement(o Options) element {
	c := schemaComment(o)
	return element{Element: nft.Element{Key: nft.Mark(1), Comment: c}, text: fmt.Sprintf("%s comment %q", markText(1), c)}
}

// baseChains are the hooked chains; they depend on the options only.
func baseChains(o Options) []chain {
	mask := o.MarkMask
	mt := markText(mask)
	famName := map[nft.Family]string{nft.IPv4: "ipv4", nft.IPv6: "ipv6"}
	ctNew, unset := nft.MatchCtStateNew(), nft.MatchCtMark(0)
	shards, shardMask := o.shards()
	choose := func(fam nft.Family, set nft.Set) rule {
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(unset, nft.MatchFamily(fam), nft.SetCtMarkFromService(fam, set.Name)), Comment: "new connection to a farm: mark it with the farm"},
			text: fmt.Sprintf("ct mark 0x00000000 meta nfproto %s ct mark set %s daddr . meta l4proto . th dport map @%s", famName[fam], fam, set.Name),
			seed: "iptables -t mangle -A PREROUTING -d VIP -p PROTO --dport PORT ...  (one rule per backend, walked in order)",
		}
	}
	// New connections jump to the choosing chain; every other packet only
	// has its backend's counter updated.
	choosing := chain{
		Chain: nft.Chain{Name: chainChoose},
		rules: []rule{
			choose(nft.IPv4, setServices4), choose(nft.IPv4, setServiceRanges4),
			choose(nft.IPv6, setServices6), choose(nft.IPv6, setServiceRanges6),
			{
				Rule: nft.Rule{Exprs: nft.JumpByMark(shardMask, setShards.Name), Comment: "to the chain of the farm's schedule map"},
				text: fmt.Sprintf("ct mark & %s vmap @%s", markText(shardMask), setShards.Name),
			},
			{
				Rule: nft.Rule{Exprs: slices.Concat(nft.MatchL4Proto(protoTCP), nft.MatchCtMarkIn(mask, setFarms.Name), []expr.Any{nft.RejectTCPReset()}), Comment: "farm without an available backend: refuse"},
				text: fmt.Sprintf("meta l4proto tcp ct mark & %s @%s reject with tcp reset", mt, setFarms.Name),
			},
			{
				Rule: nft.Rule{Exprs: slices.Concat(nft.MatchCtMarkIn(mask, setFarms.Name), []expr.Any{nft.RejectUnreachable()}), Comment: "farm without an available backend: refuse"},
				text: fmt.Sprintf("ct mark & %s @%s reject with icmpx port-unreachable", mt, setFarms.Name),
			},
		},
	}
	filter := func(name string, hook *nftables.ChainHook, hookName string) chain {
		return chain{
			Chain: nft.Chain{Name: name, Hook: &nft.Hook{Type: nftables.ChainTypeFilter, Hook: hook, Priority: priorityChoose}},
			hook:  fmt.Sprintf("type filter hook %s priority %d; policy accept;", hookName, priorityChoose),
			rules: []rule{
				{
					Rule: nft.Rule{Exprs: slices.Concat(ctNew, []expr.Any{nft.Jump(chainChoose)}), Comment: "new connections choose a backend"},
					text: "ct state new jump " + chainChoose,
				},
				{
					Rule: nft.Rule{Exprs: nft.CountByMark(mask, setTraffic.Name), Comment: "count packets and bytes per backend"},
					text: fmt.Sprintf("ct mark & %s @%s", mt, setTraffic.Name),
					seed: "iptables -t mangle -A PREROUTING -j CONNMARK --restore-mark  (the mark is read from conntrack directly)",
				},
			},
		}
	}
	dnatRule := func(fam nft.Family, set nft.Set, withPort bool) rule {
		proto := ""
		if withPort {
			// nft's parser wants a transport protocol before a port mapping;
			// the kernel does not, and only TCP and UDP connections carry
			// a backend mark.
			proto = "meta l4proto { tcp, udp } "
		}
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchFamily(fam), nft.DNATByMark(fam, mask, set.Name, withPort)), Comment: "dnat to the backend the mark names"},
			text: fmt.Sprintf("meta nfproto %s %sdnat %s to ct mark & %s map @%s", famName[fam], proto, fam, mt, set.Name),
			seed: "iptables -t nat -A PREROUTING -m mark --mark MARK -j DNAT --to-destination BACKEND  (one rule per backend)",
		}
	}
	dnat := func(name string, hook *nftables.ChainHook, hookName string) chain {
		return chain{
			Chain: nft.Chain{Name: name, Hook: &nft.Hook{Type: nftables.ChainTypeNAT, Hook: hook, Priority: priorityDstNAT}},
			hook:  fmt.Sprintf("type nat hook %s priority %d; policy accept;", hookName, priorityDstNAT),
			rules: []rule{
				dnatRule(nft.IPv4, setDNAT4, true), dnatRule(nft.IPv4, setDNATAddr4, false),
				dnatRule(nft.IPv6, setDNAT6, true), dnatRule(nft.IPv6, setDNATAddr6, false),
			},
		}
	}
	snatRule := func(fam nft.Family, set nft.Set) rule {
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchFamily(fam), nft.SNATByMark(fam, mask, set.Name)), Comment: "nat mode: snat to the farm's source"},
			text: fmt.Sprintf("meta nfproto %s snat %s to ct mark & %s map @%s", famName[fam], fam, mt, set.Name),
			seed: "iptables -t nat -A POSTROUTING -m mark --mark MARK -j SNAT --to-source VIP  (one rule per backend)",
		}
	}
	chains := []chain{choosing}
	for i := range shards {
		set := scheduleSets[i]
		chains = append(chains, chain{
			Chain: nft.Chain{Name: chainSchedule + set.Name},
			rules: []rule{{
				Rule: nft.Rule{Exprs: nft.SetCtMarkFromSchedule(set.Name, scheduleSlots), Comment: "weighted random choice of backend"},
				text: fmt.Sprintf("ct mark set ct mark . numgen random mod %d map @%s", scheduleSlots, set.Name),
				seed: "iptables -t mangle -A PREROUTING ... -m statistic --mode random --probability P -j MARK --set-mark BACKEND; -m state --state NEW -j CONNMARK --save-mark",
			}},
		})
	}
	chains = append(chains,
		filter(chainPrerouting, nftables.ChainHookPrerouting, "prerouting"),
		dnat(chainDNAT, nftables.ChainHookPrerouting, "prerouting"),
		chain{
			Chain: nft.Chain{Name: chainSNAT, Hook: &nft.Hook{Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: prioritySrcNAT}},
			hook:  fmt.Sprintf("type nat hook postrouting priority %d; policy accept;", prioritySrcNAT),
			rules: []rule{
				snatRule(nft.IPv4, setSNAT4), snatRule(nft.IPv6, setSNAT6),
				{
					Rule: nft.Rule{Exprs: nft.MasqueradeByMark(mask, setMasquerade.Name), Comment: "nat mode: masquerade"},
					text: fmt.Sprintf("ct mark & %s @%s masquerade", mt, setMasquerade.Name),
					seed: "iptables -t nat -A POSTROUTING -m mark --mark MARK -j MASQUERADE",
				},
			},
		},
	)
	if o.LocalConnections {
		chains = append(chains,
			filter(chainOutput, nftables.ChainHookOutput, "output"),
			dnat(chainDNATOutput, nftables.ChainHookOutput, "output"))
	}
	return chains
}

// sortedKeys returns a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}
