package lb

import (
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/google/nftables/expr"
	"github.com/l4nft/l4nft/nft"
)

// A farm whose options need values in rules (a round robin's cycle, a
// hash's fields, a persistence timeout) gets a chain of its own, named
// after its farm mark: farm_0x00001200. The farm_chains verdict map sends
// the farm's new connections there, and the chain sets the backend mark
// or refuses the connection. Like the farm's schedule, the chain belongs
// to the farm mark: a change of options installs a new chain under a new
// farm mark, re-points the services to it, then deletes the old one (see
// plan), so a new connection always meets one whole version of the farm.
//
// Farms with none of these options (weighted random, no persistence) have
// no chain: their choice is the shared shard chains', elements only.

// farmChainPrefix starts the name of every farm chain.
const farmChainPrefix = "farm_"

// hashSeed is the seed of every jhash: fixed, so that balancers with the
// same configuration choose alike.
const hashSeed = 0x4c346e66

// persistEntries caps each persistence map: when it is full, a new
// connection is still balanced, only not remembered.
const persistEntries = 1 << 20

// needsChain reports whether a farm needs a chain of its own.
func needsChain(f Farm) bool {
	return f.Scheduler != Weight || f.Persistence != nil || f.Limits != nil || len(f.Allow) > 0 || len(f.Deny) > 0 || len(f.Helpers) > 0 || limitsBackends(f)
}

// limitsBackends reports whether a backend of the farm has MaxConnections.
func limitsBackends(f Farm) bool {
	return slices.ContainsFunc(f.Backends, func(b Backend) bool { return b.MaxConnections > 0 })
}

// idKey names a farm's lasting id in the mark table: a mark that, unlike
// the farm mark, stays the farm's for its whole life. Persistence entries
// are keyed by it, so that they outlive changes of the farm's schedule.
// (Backend names cannot hold '#'.)
func idKey(farm string) objectKey { return objectKey{farm, "#id"} }

// needsID reports whether a farm needs a lasting id.
func needsID(f Farm) bool {
	return f.Persistence != nil || f.Scheduler == Consistent || refuses(f)
}

// farmMarks are the marks a farm chain names.
type farmMarks struct {
	farm, lasting, mask uint32
	// backends are the marks of the backends with MaxConnections.
	backends map[string]uint32
}

// persistSet returns the persistence map for a family and key.
func persistSet(fam nft.Family, by PersistBy) nft.Set {
	for _, s := range persistSets {
		if s.Name == persistSetName(fam, by) {
			return s
		}
	}
	panic("no persistence map for " + persistSetName(fam, by))
}

func persistSetName(fam nft.Family, by PersistBy) string {
	if fam == nft.IPv6 {
		return fmt.Sprintf("persist_%s6", by)
	}
	return fmt.Sprintf("persist_%s4", by)
}

// farmChain compiles a farm's chain: admission, persistence, the choice
// of backend from schedule (or, for the consistent scheduler, from its
// Maglev table in table), drawing from space slots, backends' connection
// limits, and the refusal when no backend takes connections.
func farmChain(f Farm, m farmMarks, schedule, table nft.Set, space uint32, text bool) *chain {
	fam := nft.FamilyOf(f.Address)
	c := &chain{Chain: nft.Chain{Name: farmChainPrefix + markText(m.farm)}}
	textf := func(format string, args ...any) string {
		if !text {
			return ""
		}
		return fmt.Sprintf(format, args...)
	}
	c.rules = append(c.rules, admission(f, m, text)...)
	c.helpers = helperObjectsOf(f)
	var key nft.PersistKey
	var persist nft.Set
	var ttl string
	if p := f.Persistence; p != nil {
		key = nft.PersistKey{Family: fam, ID: m.lasting, Fields: p.By.fields()}
		persist = persistSet(fam, p.By)
		ttl = p.TTL.String()
		k := fmt.Sprintf("%s . %s", constText(m.lasting), fieldsText(fam, key.Fields))
		c.rules = append(c.rules,
			rule{
				Rule: nft.Rule{Exprs: nft.RestorePersisted(key, persist.Name), Comment: "persistence: the client's last backend"},
				text: textf("ct mark set %s map @%s", k, persist.Name),
				seed: "nftlb: persistence (ct mark set ... map @persist-map); IPVS: persistent templates",
			},
			rule{
				Rule: nft.Rule{Exprs: nft.ForgetPersisted(key, persist.Name, setPersistOK.Name, m.farm), Comment: "persistence: forget a backend that takes no connections"},
				text: textf("ct mark != %s %s . ct mark != @%s delete @%s { %s : ct mark } ct mark set %s",
					markText(m.farm), constText(m.farm), setPersistOK.Name, persist.Name, k, markText(m.farm)),
			},
			rule{
				Rule: nft.Rule{Exprs: nft.KeepPersisted(key, persist.Name, m.farm, p.TTL.duration()), Comment: "persistence: keep it while it takes connections"},
				text: textf("ct mark != %s update @%s { %s timeout %s : ct mark }", markText(m.farm), persist.Name, k, ttl),
			})
	}
	var slot []expr.Any
	var slotText string
	switch f.Scheduler {
	case RoundRobin:
		slot, slotText = nft.CounterSlot(space), fmt.Sprintf("numgen inc mod %d", space)
	case SymHash:
		slot, slotText = nft.SymHashSlot(space), fmt.Sprintf("symhash mod %d", space)
	case Hash, Consistent:
		fields := nftFields(f.HashFields)
		slot, slotText = nft.HashSlot(fam, fields, space, hashSeed), fmt.Sprintf("jhash %s mod %d seed 0x%x", fieldsText(fam, fields), space, hashSeed)
	default:
		slot, slotText = nft.RandomSlot(space), fmt.Sprintf("numgen random mod %d", space)
	}
	// choose returns the choice's rule, fresh each call, and its text;
	// guarded, it runs only while the mark is still the farm's.
	choose := func(guarded bool) ([]expr.Any, string) {
		exprs := nft.ChooseBySlot(schedule.Name, slot)
		t := fmt.Sprintf("ct mark set ct mark . %s map @%s", slotText, schedule.Name)
		if f.Scheduler == Consistent {
			exprs = nft.ChooseFromTable(table.Name, m.lasting, slot)
			t = fmt.Sprintf("ct mark set %s . %s map @%s", constText(m.lasting), slotText, table.Name)
		}
		if guarded || f.Persistence != nil {
			exprs = slices.Concat(nft.MatchCtMark(m.farm), exprs)
			t = fmt.Sprintf("ct mark %s %s", markText(m.farm), t)
		}
		if f.Persistence != nil {
			exprs = slices.Concat(exprs, nft.RememberChoice(key, persist.Name, f.Persistence.TTL.duration()))
			t += fmt.Sprintf(" add @%s { %s . %s timeout %s : ct mark }", persist.Name, constText(m.lasting), fieldsText(fam, key.Fields), ttl)
		}
		return exprs, t
	}
	exprs, chooseText := choose(false)
	c.rules = append(c.rules, rule{
		Rule: nft.Rule{Exprs: exprs, Comment: f.Scheduler.String() + " choice of backend"},
		text: textf("%s", chooseText),
		seed: seedOf(f.Scheduler),
	})
	// A backend at its max_connections takes no more. The kernel counts a
	// connection when it checks the count, so a connection turned away
	// after the check would stay counted against the full backend: the
	// check drops the connection's first packet (its conntrack entry, and
	// so the count, go with it; the client's retransmission chooses
	// again) and flags the backend full for fullFor. While it is flagged, a
	// choice that falls on it is made again, up to fullRetries times, without
	// a check.
	if limitsBackends(f) {
		for range fullRetries {
			exprs, again := choose(true)
			c.rules = append(c.rules,
				rule{
					Rule: nft.Rule{Exprs: slices.Concat(nft.MatchCtMarkIn(m.mask, setBackendFull.Name), nft.SetCtMark(m.farm)), Comment: "a full backend: choose again"},
					text: textf("ct mark & %s @%s ct mark set %s", markText(m.mask), setBackendFull.Name, markText(m.farm)),
				},
				rule{
					Rule: nft.Rule{Exprs: exprs, Comment: f.Scheduler.String() + " choice of backend, again"},
					text: textf("%s", again),
				})
		}
	}
	for _, b := range f.Backends {
		if b.MaxConnections == 0 {
			continue
		}
		bm := m.backends[b.Name]
		c.rules = append(c.rules, rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MarkOverConnections(bm, setBackendConns.Name, uint32(b.MaxConnections)),
				nft.FlagMark(setBackendFull.Name, fullFor),
				nft.CountPair(setRejects.Name, m.lasting, uint32(reasonBackendFull)), []expr.Any{nft.Drop()}),
				Comment: "refuse: backend_full " + b.Name},
			text: textf("ct mark %s add @%s { ct mark ct count over %d } add @%s { ct mark timeout %s } %s . %s @%s drop",
				markText(bm), setBackendConns.Name, b.MaxConnections, setBackendFull.Name, fullFor, constText(m.lasting), constText(uint32(reasonBackendFull)), setRejects.Name),
			seed: "IPVS: u_threshold; nftlb: backend est-connlimit",
		})
	}
	c.rules = append(c.rules,
		rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchCtMarkIs(m.mask, m.farm), nft.MatchL4Proto(protoTCP), []expr.Any{nft.RejectTCPReset()}), Comment: "no available backend: refuse"},
			text: textf("ct mark & %s == %s meta l4proto tcp reject with tcp reset", markText(m.mask), markText(m.farm)),
		},
		rule{
			Rule: nft.Rule{Exprs: slices.Concat(nft.MatchCtMarkIs(m.mask, m.farm), []expr.Any{nft.RejectUnreachable()}), Comment: "no available backend: refuse"},
			text: textf("ct mark & %s == %s reject with icmpx port-unreachable", markText(m.mask), markText(m.farm)),
		})
	return c
}

// seedOf names the equivalent of a scheduler in nftlb or IPVS.
func seedOf(s Scheduler) string {
	switch s {
	case RoundRobin:
		return "nftlb: numgen inc mod N map { ... } (rr); IPVS: wrr"
	case Hash:
		return "nftlb: jhash ... mod N map { ... } (hash); IPVS: sh"
	case SymHash:
		return "nftlb: symhash mod N map { ... } (symhash)"
	case Consistent:
		return "IPVS: mh (Maglev); no nftlb or iptables equivalent"
	}
	return "iptables -m statistic --mode random (one rule per backend)"
}

// sameChain reports whether two farms' chains are the same rules.
func sameChain(a, b *chain) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Name != b.Name || len(a.rules) != len(b.rules) {
		return false
	}
	for i := range a.rules {
		if a.rules[i].Comment != b.rules[i].Comment || !sameExprs(a.rules[i].Exprs, b.rules[i].Exprs) {
			return false
		}
	}
	return true
}

func sameExprs(a, b []expr.Any) bool { return reflect.DeepEqual(a, b) }

// chainName returns the name of the farm's chain; "" for none, or for no
// farm (c nil).
func (c *compiledFarm) chainName() string {
	if c == nil || c.chain == nil {
		return ""
	}
	return c.chain.Name
}

// admission compiles the rules that admit a farm's new connections or
// not, in order: deny list, allow list, limits, then helpers for those
// admitted. Each refusal is counted by reason in the rejects set.
func admission(f Farm, m farmMarks, text bool) []rule {
	fam := nft.FamilyOf(f.Address)
	textf := func(format string, args ...any) string {
		if !text {
			return ""
		}
		return fmt.Sprintf(format, args...)
	}
	key := nft.ClientKey(fam, m.lasting)
	keyText := fmt.Sprintf("%s . %s saddr", constText(m.lasting), fam)
	count := func(r rejectReason) []expr.Any { return nft.CountPair(setRejects.Name, m.lasting, uint32(r)) }
	countText := func(r rejectReason) string {
		return fmt.Sprintf("%s . %s @%s", constText(m.lasting), constText(uint32(r)), setRejects.Name)
	}
	action, actionText := []expr.Any{nft.RejectUnreachable()}, "reject with icmpx port-unreachable"
	if f.Protocol == TCP {
		action, actionText = []expr.Any{nft.RejectTCPReset()}, "reject with tcp reset"
	}
	if f.Limits != nil && f.Limits.Action == Drop {
		action, actionText = []expr.Any{nft.Drop()}, "drop"
	}
	var out []rule
	refuse := func(match []expr.Any, matchText string, r rejectReason, verdict []expr.Any, verdictText, seed string) {
		out = append(out, rule{
			Rule: nft.Rule{Exprs: slices.Concat(match, count(r), verdict), Comment: "refuse: " + reasonNames[r]},
			text: textf("%s %s %s", matchText, countText(r), verdictText),
			seed: seed,
		})
	}
	allow, deny := setAllow4, setDeny4
	if fam == nft.IPv6 {
		allow, deny = setAllow6, setDeny6
	}
	if len(f.Deny) > 0 {
		refuse(nft.MatchKeyIn(key, deny.Name, false), fmt.Sprintf("%s @%s", keyText, deny.Name), reasonDenied,
			[]expr.Any{nft.Drop()}, "drop", "nftlb: policy type blacklist")
	}
	if len(f.Allow) > 0 {
		refuse(nft.MatchKeyIn(key, allow.Name, true), fmt.Sprintf("%s != @%s", keyText, allow.Name), reasonNotAllowed,
			[]expr.Any{nft.Drop()}, "drop", "nftlb: policy type whitelist")
	}
	if l := f.Limits; l != nil {
		burst := func(rate int) uint32 {
			if l.Burst > 0 {
				return uint32(l.Burst)
			}
			return uint32(rate)
		}
		if l.NewPerSecond > 0 {
			refuse(nft.OverRate(uint32(l.NewPerSecond), burst(l.NewPerSecond)),
				fmt.Sprintf("limit rate over %d/second burst %d packets", l.NewPerSecond, burst(l.NewPerSecond)),
				reasonRate, action, actionText, "nftlb: new-rtlimit")
		}
		if l.NewPerClientPerSecond > 0 {
			set := setClientRate4
			if fam == nft.IPv6 {
				set = setClientRate6
			}
			refuse(nft.KeyOverRate(key, set.Name, uint32(l.NewPerClientPerSecond), burst(l.NewPerClientPerSecond), clientIdle),
				fmt.Sprintf("update @%s { %s timeout %s limit rate over %d/second burst %d packets }", set.Name, keyText, clientIdle, l.NewPerClientPerSecond, burst(l.NewPerClientPerSecond)),
				reasonClientRate, action, actionText, "nftlb: new-rtlimit per source (meter)")
		}
		if l.EstablishedPerClient > 0 {
			set := setClientConns4
			if fam == nft.IPv6 {
				set = setClientConns6
			}
			refuse(nft.KeyOverConnections(key, set.Name, uint32(l.EstablishedPerClient)),
				fmt.Sprintf("add @%s { %s ct count over %d }", set.Name, keyText, l.EstablishedPerClient),
				reasonClientConnections, action, actionText, "nftlb: est-connlimit")
		}
	}
	for _, h := range f.Helpers {
		for _, proto := range helperProtos(f) {
			for _, o := range objectsOf(h, proto) {
				out = append(out, rule{
					Rule: nft.Rule{Exprs: append(nft.MatchL4Proto(proto), nft.SetCtHelper(o.name)), Comment: "conntrack helper " + o.name},
					text: textf("meta l4proto %s ct helper set %q", protoName(proto), o.name),
					seed: "iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp",
				})
			}
		}
	}
	return out
}

// How long a backend found at its max_connections is flagged full, and
// how many times a choice that falls on a flagged backend is made again.
// The flag outlasts the client's first retransmissions (1 and 3 s), so
// the client whose packet was dropped is not the next to find the backend
// full; a backend back under its limit waits for the flag to expire.
const (
	fullFor     = 5 * time.Second
	fullRetries = 15
)

// clientIdle is how long a client's rate limiter outlives its last new
// connection.
const clientIdle = time.Minute

// helperObjectsOf returns the helper objects a farm's chain names.
func helperObjectsOf(f Farm) []nft.HelperObject {
	var out []nft.HelperObject
	for _, h := range f.Helpers {
		for _, proto := range helperProtos(f) {
			for _, o := range objectsOf(h, proto) {
				out = append(out, nft.HelperObject{Name: o.name, Helper: o.helper, Proto: o.proto})
			}
		}
	}
	return out
}

// constText writes a constant as the rules load it (nft.Constant), which
// nft parses where a bare constant would not be.
func constText(v uint32) string { return "ct mark & 0x00000000 | " + markText(v) }
