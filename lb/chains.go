package lb

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/l4nft/l4nft/nft"
)

// rule is one rule as l4nft builds it: the expressions sent to the kernel
// and the same rule in nft syntax, for Render.
type rule struct {
	nft.Rule
	text string
	// seed is the iptables rule of the seed design this rule replaces.
	seed string
}

// chain is a base chain with its rules; hook is its hook line in nft syntax.
type chain struct {
	nft.Chain
	hook  string
	rules []rule
	// helpers are the ct helper objects the rules name, made before them.
	helpers []nft.HelperObject
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
	// A farm of every protocol is looked up by address only after the
	// ports of every farm: each rule acts on a mark still 0, so the first
	// that finds a farm wins.
	chooseByAddress := func(fam nft.Family, set nft.Set) rule {
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(unset, nft.MatchFamily(fam), nft.SetCtMarkFromAddress(fam, set.Name)), Comment: "new connection to a farm of every protocol: mark it with the farm"},
			text: fmt.Sprintf("ct mark 0x00000000 meta nfproto %s ct mark set %s daddr map @%s", famName[fam], fam, set.Name),
			seed: "iptables -t mangle -A PREROUTING -d VIP ...  (protocol all: no -p, no --dport; one rule per backend)",
		}
	}
	// New connections jump to the choosing chain; every other packet only
	// has its backend's counter updated.
	choosing := chain{
		Chain: nft.Chain{Name: chainChoose},
		rules: []rule{
			choose(nft.IPv4, setServices4), choose(nft.IPv4, setServiceRanges4), chooseByAddress(nft.IPv4, setServicesAddr4),
			choose(nft.IPv6, setServices6), choose(nft.IPv6, setServiceRanges6), chooseByAddress(nft.IPv6, setServicesAddr6),
			{
				Rule: nft.Rule{Exprs: nft.JumpByMark(mask, setFarmChains.Name), Comment: "to the farm's own chain, if it has one"},
				text: fmt.Sprintf("ct mark & %s vmap @%s", mt, setFarmChains.Name),
			},
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
	// tcp_strict: a packet conntrack finds invalid, to a service of a
	// farm in a strict set, is counted there and dropped.
	strict := func(fam nft.Family, set nft.Set) rule {
		return rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchCtStateInvalid(), nft.MatchService(fam, set.Name), []expr.Any{nft.Drop()}),
				Comment: "tcp_strict: drop invalid packets to the farm"},
			text: fmt.Sprintf("ct state invalid %s daddr . meta l4proto . th dport @%s drop", fam, set.Name),
			seed: "nftlb: tcp-strict (ct state invalid drop)",
		}
	}
	filter := func(name string, hook *nftables.ChainHook, hookName string) chain {
		return chain{
			Chain: nft.Chain{Name: name, Hook: &nft.Hook{Type: nftables.ChainTypeFilter, Hook: hook, Priority: priorityChoose}},
			hook:  fmt.Sprintf("type filter hook %s priority %d; policy accept;", hookName, priorityChoose),
			rules: []rule{
				strict(nft.IPv4, setStrict4), strict(nft.IPv4, setStrictRanges4),
				strict(nft.IPv6, setStrict6), strict(nft.IPv6, setStrictRanges6),
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
			// the kernel does not, and only TCP, UDP and SCTP connections
			// carry the mark of a backend with a port (a farm of every
			// protocol has backends without one).
			proto = "meta l4proto { tcp, udp, sctp } "
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
				Rule: nft.Rule{Exprs: nft.ChooseBySlot(set.Name, nft.RandomSlot(scheduleSlots)), Comment: "weighted random choice of backend"},
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
