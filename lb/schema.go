package lb

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/l4nft/l4nft/nft"
)

// schemaVersion changes whenever the table's layout does; a Balancer that
// finds another version (or other options baked into the layout) replaces
// the table atomically on its next Apply.
const schemaVersion = 8

// The table's sets and maps. Farms and backends are elements of these;
// there is no kernel object per farm.
var (
	service4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	service6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	target4  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	target6  = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
	// slotKey is 8 bytes, mark . slot, declared as one 64-bit integer:
	// a concatenated type without the concatenation flag crashes nft 1.0.6
	// when it lists the table.
	slotKey = func() nftables.SetDatatype { t := nftables.TypeInteger; t.Bytes = 8; return t }()

	// services: address . protocol . port -> the farm's mark.
	setServices4      = nft.Set{Name: "services4", Key: service4, Data: nftables.TypeMark, Concat: true}
	setServices6      = nft.Set{Name: "services6", Key: service6, Data: nftables.TypeMark, Concat: true}
	setServiceRanges4 = nft.Set{Name: "service_ranges4", Key: service4, Data: nftables.TypeMark, Concat: true, Interval: true}
	setServiceRanges6 = nft.Set{Name: "service_ranges6", Key: service6, Data: nftables.TypeMark, Concat: true, Interval: true}
	// services_addr: address -> the mark of the farm that serves every
	// protocol there (AllProtocols). Looked up after the maps above, so
	// a farm's own ports on the same address win.
	setServicesAddr4 = nft.Set{Name: "services_addr4", Key: nftables.TypeIPAddr, Data: nftables.TypeMark}
	setServicesAddr6 = nft.Set{Name: "services_addr6", Key: nftables.TypeIP6Addr, Data: nftables.TypeMark}
	// schedule00..63: farm mark . random slot -> backend mark. Each
	// available backend owns a range of its farm's slots sized by its
	// weight. The 8-byte key is one field to the kernel (not a
	// concatenation), so it stores the map as an rbtree: loading and
	// changing it cost a fraction of what the per-field pipapo type costs,
	// and a lookup is O(log n). A farm's ranges live in one of 64 maps,
	// chosen by its mark: the kernel's commit of an rbtree change costs in
	// proportion to the whole map (4.4 ms at 40,000 elements, 50 us at
	// 2,500, measured on 6.18), so 64 small maps keep a change cheap.
	scheduleSets = func() []nft.Set {
		out := make([]nft.Set, maxShards)
		for i := range out {
			out[i] = nft.Set{Name: fmt.Sprintf("schedule%02d", i), Key: slotKey, Data: nftables.TypeMark, Interval: true}
		}
		return out
	}()
	// schedule_shards: the bits of a farm mark that pick its schedule map
	// -> a jump to the chain that looks that map up.
	setShards = nft.Set{Name: "schedule_shards", Key: nftables.TypeMark, Data: nftables.TypeVerdict}
	// dnat: backend mark -> address . port (or address alone, keeping the
	// client's port). The element counters count new connections.
	setDNAT4     = nft.Set{Name: "dnat4", Key: nftables.TypeMark, Data: target4, Counter: true}
	setDNAT6     = nft.Set{Name: "dnat6", Key: nftables.TypeMark, Data: target6, Counter: true}
	setDNATAddr4 = nft.Set{Name: "dnat_addr4", Key: nftables.TypeMark, Data: nftables.TypeIPAddr, Counter: true}
	setDNATAddr6 = nft.Set{Name: "dnat_addr6", Key: nftables.TypeMark, Data: nftables.TypeIP6Addr, Counter: true}
	// snat: backend mark -> source address (NAT mode with Farm.Source).
	setSNAT4 = nft.Set{Name: "snat4", Key: nftables.TypeMark, Data: nftables.TypeIPAddr}
	setSNAT6 = nft.Set{Name: "snat6", Key: nftables.TypeMark, Data: nftables.TypeIP6Addr}
	// masq_backends: backend marks of NAT-mode farms without a Source.
	setMasquerade = nft.Set{Name: "masq_backends", Key: nftables.TypeMark}
	// traffic: backend marks; the element counters count every packet
	// and byte of the backend's connections, both directions.
	setTraffic = nft.Set{Name: "traffic", Key: nftables.TypeMark, Counter: true}
	// farms: every farm mark; the comment records the farm's name and
	// options so a new process can adopt the table. A new connection whose
	// mark is still its farm's after the schedule lookup found no
	// available backend, and is refused.
	setFarms = nft.Set{Name: "farms", Key: nftables.TypeMark}
	// backends: every backend mark; the comment records the backend's
	// name, weight and state so a new process can adopt the table. No rule
	// reads it, so rewriting a comment never affects traffic, and it is
	// kept apart from the counted sets so that changing a weight does not
	// reset a counter.
	setBackends = nft.Set{Name: "backends", Key: nftables.TypeMark}
	// schema: one element whose comment records the layout version and
	// the options baked into it.
	setSchema = nft.Set{Name: "schema", Key: nftables.TypeMark}
	// farm_chains: the farm mark of a farm with a chain of its own -> a
	// jump to it (see farmChain).
	setFarmChains = nft.Set{Name: "farm_chains", Key: nftables.TypeMark, Data: nftables.TypeVerdict}
	// persist_ok: farm mark . backend mark of the backends that
	// persistence may send new connections to: those the farm's schedule
	// holds.
	setPersistOK = nft.Set{Name: "persist_ok", Key: slotKey}
	// consistent00..63: lasting farm id . slot -> backend mark, the Maglev
	// tables of the farms with the consistent scheduler. Hash maps, so a
	// change of a farm's table rewrites its changed slots in place; 64 of
	// them, picked by the lasting id, because the kernel's dump of a hash
	// map restarts its walk for every message: reading back 100,000
	// elements of one map took 1.4 s, 400,000 took 45 s (measured on 6.18).
	consistentSets = func() []nft.Set {
		out := make([]nft.Set, maxShards)
		for i := range out {
			out[i] = nft.Set{Name: fmt.Sprintf("consistent%02d", i), Key: slotKey, Data: nftables.TypeMark}
		}
		return out
	}()
	// allow4, allow6, deny4, deny6: lasting farm id . source address
	// ranges, the farms' allow and deny lists (see listElements).
	setAllow4 = nft.Set{Name: "allow4", Key: integerKey(8), Interval: true}
	setAllow6 = nft.Set{Name: "allow6", Key: integerKey(20), Interval: true}
	setDeny4  = nft.Set{Name: "deny4", Key: integerKey(8), Interval: true}
	setDeny6  = nft.Set{Name: "deny6", Key: integerKey(20), Interval: true}
	// rejects: lasting farm id . reason, one counted element per reason a
	// farm refuses connections for (see Rejections).
	setRejects = nft.Set{Name: "rejects", Key: slotKey, Counter: true}
	// strict4, strict_ranges4, strict6, strict_ranges6: the services of
	// the farms with TCPStrict, keyed as in the services maps; an
	// element's counter counts the invalid packets dropped.
	setStrict4       = nft.Set{Name: "strict4", Key: service4, Concat: true, Counter: true}
	setStrictRanges4 = nft.Set{Name: "strict_ranges4", Key: service4, Concat: true, Interval: true, Counter: true}
	setStrict6       = nft.Set{Name: "strict6", Key: service6, Concat: true, Counter: true}
	setStrictRanges6 = nft.Set{Name: "strict_ranges6", Key: service6, Concat: true, Interval: true, Counter: true}
	// client_rate4/6 and client_conns4/6: lasting farm id . client
	// address -> the client's rate limiter or connection count, made by
	// the rules as clients arrive.
	setClientRate4  = nft.Set{Name: "client_rate4", Key: integerKey(8), Dynamic: true, Timeouts: true, Size: clientEntries}
	setClientRate6  = nft.Set{Name: "client_rate6", Key: integerKey(20), Dynamic: true, Timeouts: true, Size: clientEntries}
	setClientConns4 = nft.Set{Name: "client_conns4", Key: integerKey(8), Dynamic: true, Size: clientEntries}
	setClientConns6 = nft.Set{Name: "client_conns6", Key: integerKey(20), Dynamic: true, Size: clientEntries}
	// backend_conns: backend mark -> its connection count, for the
	// backends with MaxConnections.
	setBackendConns = nft.Set{Name: "backend_conns", Key: nftables.TypeMark, Dynamic: true, Size: clientEntries}
	// backend_full: the marks of backends found at their MaxConnections,
	// for a second (see farmChain).
	setBackendFull = nft.Set{Name: "backend_full", Key: nftables.TypeMark, Dynamic: true, Timeouts: true, Size: clientEntries}
	// persist_BY_FAMILY: lasting farm id . client key -> backend mark,
	// written by the rules as connections arrive and expiring on their
	// own. They hold no farm's elements: nothing reads them back or
	// diffs them.
	persistSets = func() []nft.Set {
		var out []nft.Set
		for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
			for by := range PersistBy(len(persistBys.names)) {
				key := nftables.TypeInteger
				key.Bytes = uint32(nft.PersistKey{Family: fam, Fields: by.fields()}.Len())
				out = append(out, nft.Set{Name: persistSetName(fam, by), Key: key, Data: nftables.TypeMark,
					Dynamic: true, Timeouts: true, Size: persistEntries})
			}
		}
		return out
	}()
)

// maxShards is the number of schedule maps; a narrow mark mask uses fewer.
const maxShards = 64

// scheduleSlots is the number of slots each farm's weights share. Each
// backend's share is exact to within 1/scheduleSlots.
const scheduleSlots = 1 << 24

// serviceSets are the maps that give a new connection its farm's mark.
var serviceSets = []nft.Set{setServices4, setServiceRanges4, setServicesAddr4, setServices6, setServiceRanges6, setServicesAddr6}

// allSets is every set of the table, in creation order.
var allSets = slices.Concat(
	serviceSets,
	scheduleSets,
	[]nft.Set{setShards, setDNAT4, setDNATAddr4, setDNAT6, setDNATAddr6,
		setSNAT4, setSNAT6, setMasquerade, setTraffic, setFarms, setBackends, setSchema,
		setFarmChains, setPersistOK},
	consistentSets,
	[]nft.Set{setAllow4, setAllow6, setDeny4, setDeny6, setRejects,
		setStrict4, setStrictRanges4, setStrict6, setStrictRanges6},
)

// trafficSets are the sets whose elements the rules make as connections
// arrive: no farm's, never read back or diffed.
var trafficSets = slices.Concat(persistSets, []nft.Set{setClientRate4, setClientRate6, setClientConns4, setClientConns6, setBackendConns, setBackendFull})

// clientEntries caps each per-client set: when one is full, a new client
// is admitted without a limit of its own.
const clientEntries = 1 << 20

// integerKey is an integer key of n bytes.
func integerKey(n uint32) nftables.SetDatatype {
	t := nftables.TypeInteger
	t.Bytes = n
	return t
}

// tableSets is every set the table is made with: allSets, whose elements
// are farms', and trafficSets.
var tableSets = slices.Concat(allSets, trafficSets)

// isStrict reports whether a set is one of the tcp_strict sets, whose
// elements belong to the farm their comment names.
func isStrict(name string) bool {
	switch name {
	case setStrict4.Name, setStrictRanges4.Name, setStrict6.Name, setStrictRanges6.Name:
		return true
	}
	return false
}

// isService reports whether a set is one of the services maps.
func isService(name string) bool {
	switch name {
	case setServices4.Name, setServiceRanges4.Name, setServicesAddr4.Name,
		setServices6.Name, setServiceRanges6.Name, setServicesAddr6.Name:
		return true
	}
	return false
}

// isList reports whether a set holds allow or deny lists.
func isList(name string) bool {
	return name == setAllow4.Name || name == setAllow6.Name || name == setDeny4.Name || name == setDeny6.Name
}

// isSchedule reports whether a set is one of the schedule maps.
func isSchedule(name string) bool {
	return strings.HasPrefix(name, "schedule") && name != setShards.Name
}

// shardOf returns the schedule map of a farm mark, for marks shifted by
// shift: the mark's index modulo maxShards.
func shardOf(mark uint32, shift int) nft.Set { return scheduleSets[(mark>>shift)%maxShards] }

// consistentOf returns the Maglev table map of a lasting farm id.
func consistentOf(lasting uint32, shift int) nft.Set {
	return consistentSets[(lasting>>shift)%maxShards]
}

// isConsistent reports whether a set is one of the Maglev table maps.
func isConsistent(name string) bool { return strings.HasPrefix(name, "consistent") }

// shards returns how many schedule maps the options use, and the mask of
// the mark bits that pick one.
func (o Options) shards() (int, uint32) {
	n := min(maxShards, 1<<bits.OnesCount32(o.MarkMask))
	return n, uint32(n-1) << o.markShift()
}

// schemaComment is the comment of the schema element for these options.
func schemaComment(o Options) string {
	return fmt.Sprintf("l4nft schema=%d mark_mask=%s local=%t", schemaVersion, markText(o.MarkMask), o.LocalConnections)
}

// Base chain names.
const (
	chainChoose     = "choose_backend"
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainDNAT       = "nat_prerouting"
	chainDNATOutput = "nat_output"
	chainSNAT       = "nat_postrouting"
	// chainSchedule is the prefix of the chains that look a schedule map up.
	chainSchedule = "choose_in_"
	// priorityChoose runs right after conntrack (-200) has created the
	// connection's entry, before any mangle-priority user of the mark can
	// have written to it: a new connection's mark is still 0 there
	// (helpers' expected connections aside), so setting the whole mark
	// sets l4nft's bits and keeps everyone else's.
	priorityChoose = nftables.ChainPriority(-199)
	priorityDstNAT = nftables.ChainPriority(-100)
	prioritySrcNAT = nftables.ChainPriority(100)
)
