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

// backendKey identifies a backend across applies.
type backendKey struct{ farm, backend string }

func (k backendKey) String() string { return k.farm + "/" + k.backend }

// compile turns a valid State into the ruleset that implements it. marks
// holds the mark of every backend of s.
func compile(s State, o Options, marks map[backendKey]uint32) ruleset {
	r := newRuleset()
	r.base = baseChains(o)
	r.add(setSchema, element{
		Element: nft.Element{Key: nft.Mark(1), Comment: schemaComment(o)},
		text:    fmt.Sprintf("%s comment %q", markText(1), schemaComment(o)),
	})
	for _, f := range s.Farms {
		compileFarm(r, f, o, marks)
	}
	return r
}

func markText(m uint32) string { return fmt.Sprintf("0x%08x", m) }

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

func compileFarm(r ruleset, f Farm, o Options, marks map[backendKey]uint32) {
	addr := f.Address.Unmap()
	fam := nft.FamilyOf(addr)
	name := farmChain(f.Name)
	comment := farmComment(f)

	// Services: every address . protocol . port of the farm jumps to its chain.
	exact, ranges := setServices4, setServiceRanges4
	if fam == nft.IPv6 {
		exact, ranges = setServices6, setServiceRanges6
	}
	for _, proto := range f.Protocol.numbers() {
		for _, p := range f.Ports {
			e := element{Element: nft.Element{Key: nft.ServiceKey(addr, proto, p.First), Jump: name, Comment: comment}}
			e.text = fmt.Sprintf("%s . %s . %s comment %q : jump %s", addr, protoName(proto), p, comment, name)
			if p.First == p.Last {
				r.add(exact, e)
				continue
			}
			e.KeyEnd = nft.ServiceKey(addr, proto, p.Last)
			r.add(ranges, e)
		}
	}

	backends := slices.SortedFunc(slices.Values(f.Backends), func(a, b Backend) int { return cmp.Compare(a.Name, b.Name) })
	var up []Backend
	for _, b := range backends {
		m := marks[backendKey{f.Name, b.Name}]
		id := f.Name + "/" + b.Name
		mt := markText(m)
		key := nft.Mark(m)
		baddr := b.Address.Unmap()

		dnat, dnatAddr := setDNAT4, setDNATAddr4
		snat := setSNAT4
		if fam == nft.IPv6 {
			dnat, dnatAddr, snat = setDNAT6, setDNATAddr6, setSNAT6
		}
		if b.Port != 0 {
			r.add(dnat, element{
				Element: nft.Element{Key: key, Value: targetValue(baddr, b.Port), Comment: id},
				text:    fmt.Sprintf("%s comment %q : %s . %d", mt, id, baddr, b.Port),
			})
		} else {
			r.add(dnatAddr, element{
				Element: nft.Element{Key: key, Value: baddr.AsSlice(), Comment: id},
				text:    fmt.Sprintf("%s comment %q : %s", mt, id, baddr),
			})
		}
		if f.Mode == NAT {
			if f.Source.IsValid() {
				src := f.Source.Unmap()
				r.add(snat, element{
					Element: nft.Element{Key: key, Value: src.AsSlice(), Comment: id},
					text:    fmt.Sprintf("%s comment %q : %s", mt, id, src),
				})
			} else {
				r.add(setMasquerade, element{
					Element: nft.Element{Key: key, Comment: id},
					text:    fmt.Sprintf("%s comment %q", mt, id),
				})
			}
		}
		r.add(setTraffic, element{Element: nft.Element{Key: key, Comment: id}, text: fmt.Sprintf("%s comment %q", mt, id)})
		bc := backendComment(f, b)
		r.add(setBackends, element{Element: nft.Element{Key: key, Comment: bc}, text: fmt.Sprintf("%s comment %q", mt, bc)})
		if b.State == Up {
			up = append(up, b)
		}
	}
	r.farms[name] = chain{Chain: nft.Chain{Name: name}, rules: farmRules(f, up, o, marks)}
}

// targetValue is the data of a dnat map element: address . port.
func targetValue(addr netip.Addr, port uint16) []byte {
	a := addr.AsSlice()
	v := make([]byte, len(a)+4)
	copy(v, a)
	v[len(a)], v[len(a)+1] = byte(port>>8), byte(port)
	return v
}

// farmRules is the weighted random choice among the available backends,
// the seed's cascade of `statistic --mode random` rules: backend i is
// taken with probability w_i / (w_i + ... + w_n), which makes the overall
// share of each backend exactly w_i / (w_1 + ... + w_n). The last backend
// takes what is left. A farm with no backend available refuses new
// connections rather than letting them reach the balancer itself.
func farmRules(f Farm, up []Backend, o Options, marks map[backendKey]uint32) []rule {
	if len(up) == 0 {
		c := f.Name + ": no backend available"
		return []rule{
			{Rule: nft.Rule{Exprs: append(nft.MatchL4Proto(protoTCP), nft.RejectTCPReset()), Comment: c},
				text: "meta l4proto tcp reject with tcp reset"},
			{Rule: nft.Rule{Exprs: []expr.Any{nft.RejectUnreachable()}, Comment: c},
				text: "reject with icmpx port-unreachable"},
		}
	}
	weights := make([]int, len(up))
	for i, b := range up {
		weights[i] = b.Weight
	}
	steps := cascade(weights)
	rules := make([]rule, 0, len(up))
	for i, b := range up {
		remaining := steps[i].modulus
		m := marks[backendKey{f.Name, b.Name}]
		set := nft.SetCtMark(o.MarkMask, m)
		setText := fmt.Sprintf("ct mark set ct mark & %s | %s", markText(^o.MarkMask), markText(m))
		r := rule{Rule: nft.Rule{Comment: f.Name + "/" + b.Name}}
		probability := float64(b.Weight) / float64(remaining)
		seedMatch := fmt.Sprintf("-m statistic --mode random --probability %.11f ", probability)
		if i < len(up)-1 {
			r.Exprs = append(nft.RandomBelow(uint32(remaining), uint32(b.Weight)), append(set, nft.Return())...)
			r.text = fmt.Sprintf("numgen random mod %d < %d %s return", remaining, b.Weight, setText)
		} else {
			r.Exprs = set
			r.text = setText
			seedMatch = "-m statistic --mode random --probability 1.00000000000 "
		}
		r.seed = fmt.Sprintf("iptables -t mangle -A PREROUTING -d %s %s-j MARK --set-mark %s  (+ CONNMARK --save-mark)",
			f.Address.Unmap(), seedMatch, markText(m))
		rules = append(rules, r)
	}
	return rules
}

// step is one rule of the cascade: take this backend if
// numgen random mod modulus < below.
type step struct{ modulus, below int }

// cascade returns the steps that pick backend i with probability
// weights[i] / sum(weights): each step draws among the weight that is left.
func cascade(weights []int) []step {
	remaining := 0
	for _, w := range weights {
		remaining += w
	}
	steps := make([]step, len(weights))
	for i, w := range weights {
		steps[i] = step{remaining, w}
		remaining -= w
	}
	return steps
}

// baseChains are the hooked chains; they depend on the options only.
func baseChains(o Options) []chain {
	mask := o.MarkMask
	mt := markText(mask)
	dispatch := func(fam nft.Family, set nft.Set) rule {
		exprs := slices.Concat(nft.MatchCtStateNew(), nft.MatchCtMarkUnset(mask), nft.MatchFamily(fam), nft.DispatchService(fam, set.Name))
		famName := "ipv4"
		if fam == nft.IPv6 {
			famName = "ipv6"
		}
		return rule{
			Rule: nft.Rule{Exprs: exprs, Comment: "dispatch new connections to farm chains"},
			text: fmt.Sprintf("ct state new ct mark & %s == 0x00000000 meta nfproto %s %s daddr . meta l4proto . th dport vmap @%s", mt, famName, fam, set.Name),
			seed: "iptables -t mangle -A PREROUTING -d VIP -p PROTO --dport PORT ... (one rule per backend, walked linearly)",
		}
	}
	count := rule{
		Rule: nft.Rule{Exprs: nft.CountByMark(mask, setTraffic.Name), Comment: "count packets and bytes per backend"},
		text: fmt.Sprintf("ct mark & %s @%s", mt, setTraffic.Name),
		seed: "iptables -t mangle -A PREROUTING -j CONNMARK --restore-mark  (the mark is read from conntrack directly)",
	}
	mangle := func(name string, hook *nftables.ChainHook, hookName string) chain {
		return chain{
			Chain: nft.Chain{Name: name, Hook: &nft.Hook{Type: nftables.ChainTypeFilter, Hook: hook, Priority: priorityMangle}},
			hook:  fmt.Sprintf("type filter hook %s priority mangle; policy accept;", hookName),
			rules: []rule{
				dispatch(nft.IPv4, setServices4), dispatch(nft.IPv4, setServiceRanges4),
				dispatch(nft.IPv6, setServices6), dispatch(nft.IPv6, setServiceRanges6),
				count,
			},
		}
	}
	dnatRule := func(fam nft.Family, set nft.Set, withPort bool) rule {
		famName := map[nft.Family]string{nft.IPv4: "ipv4", nft.IPv6: "ipv6"}[fam]
		proto := ""
		if withPort {
			// nft's parser wants a transport protocol before a port mapping;
			// the kernel does not, and only TCP and UDP connections carry
			// a backend mark.
			proto = "meta l4proto { tcp, udp } "
		}
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchFamily(fam), nft.DNATByMark(fam, mask, set.Name, withPort)), Comment: "dnat to the backend the mark names"},
			text: fmt.Sprintf("meta nfproto %s %sdnat %s to ct mark & %s map @%s", famName, proto, fam, mt, set.Name),
			seed: "iptables -t nat -A PREROUTING -m mark --mark MARK -j DNAT --to-destination BACKEND  (one rule per backend)",
		}
	}
	dnat := func(name string, hook *nftables.ChainHook, hookName string) chain {
		return chain{
			Chain: nft.Chain{Name: name, Hook: &nft.Hook{Type: nftables.ChainTypeNAT, Hook: hook, Priority: priorityDstNAT}},
			hook:  fmt.Sprintf("type nat hook %s priority -100; policy accept;", hookName),
			rules: []rule{
				dnatRule(nft.IPv4, setDNAT4, true), dnatRule(nft.IPv4, setDNATAddr4, false),
				dnatRule(nft.IPv6, setDNAT6, true), dnatRule(nft.IPv6, setDNATAddr6, false),
			},
		}
	}
	snatRule := func(fam nft.Family, set nft.Set) rule {
		famName := map[nft.Family]string{nft.IPv4: "ipv4", nft.IPv6: "ipv6"}[fam]
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchFamily(fam), nft.SNATByMark(fam, mask, set.Name)), Comment: "nat mode: snat to the farm's source"},
			text: fmt.Sprintf("meta nfproto %s snat %s to ct mark & %s map @%s", famName, fam, mt, set.Name),
			seed: "iptables -t nat -A POSTROUTING -m mark --mark MARK -j SNAT --to-source VIP  (one rule per backend)",
		}
	}
	chains := []chain{
		mangle(chainPrerouting, nftables.ChainHookPrerouting, "prerouting"),
		dnat(chainDNAT, nftables.ChainHookPrerouting, "prerouting"),
		{
			Chain: nft.Chain{Name: chainSNAT, Hook: &nft.Hook{Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: prioritySrcNAT}},
			hook:  "type nat hook postrouting priority srcnat; policy accept;",
			rules: []rule{
				snatRule(nft.IPv4, setSNAT4), snatRule(nft.IPv6, setSNAT6),
				{
					Rule: nft.Rule{Exprs: nft.MasqueradeByMark(mask, setMasquerade.Name), Comment: "nat mode: masquerade"},
					text: fmt.Sprintf("ct mark & %s @%s masquerade", mt, setMasquerade.Name),
					seed: "iptables -t nat -A POSTROUTING -m mark --mark MARK -j MASQUERADE",
				},
			},
		},
	}
	if o.LocalConnections {
		chains = append(chains,
			mangle(chainOutput, nftables.ChainHookOutput, "output"),
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
