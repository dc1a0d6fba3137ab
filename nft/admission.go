package nft

import (
	"slices"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ClientKey is the key of a per-client set: a farm's lasting id . the
// client's source address. It is a PersistKey by source address.
func ClientKey(f Family, id uint32) PersistKey {
	return PersistKey{Family: f, ID: id, Fields: []Field{SrcIP}}
}

// MatchKeyIn matches packets whose key is (or, with invert, is not) in
// set, an interval set of keys: ID . ip saddr [!]@set.
func MatchKeyIn(k PersistKey, set string, invert bool) []expr.Any {
	out, _ := k.load()
	return append(out, &expr.Lookup{SourceRegister: reg32(2), SetName: set, Invert: invert})
}

// OverRate matches while new packets come faster than rate per second,
// beyond a burst: limit rate over RATE/second burst BURST packets.
func OverRate(rate, burst uint32) []expr.Any {
	return []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Over: true, Unit: expr.LimitTimeSecond, Burst: burst}}
}

// KeyOverRate matches while the key's new packets come faster than rate
// per second, beyond a burst; each key's entry in set (a dynamic set)
// expires after idle without packets:
// update @set { KEY timeout IDLE limit rate over RATE/second burst BURST }.
func KeyOverRate(k PersistKey, set string, rate, burst uint32, idle time.Duration) []expr.Any {
	out, _ := k.load()
	return append(out, &expr.Dynset{SrcRegKey: reg32(2), SetName: set, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: idle,
		Exprs: []expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Over: true, Unit: expr.LimitTimeSecond, Burst: burst}}})
}

// connlimitOver is NFT_CONNLIMIT_F_INV: match above the count, not up to it.
const connlimitOver = 1

// KeyOverConnections matches when the key has more than n connections
// tracked, this one included: add @set { KEY ct count over N }. The
// kernel forgets a key when its count falls to zero.
func KeyOverConnections(k PersistKey, set string, n uint32) []expr.Any {
	out, _ := k.load()
	return append(out, &expr.Dynset{SrcRegKey: reg32(2), SetName: set, Operation: unix.NFT_DYNSET_OP_ADD,
		Exprs: []expr.Any{&expr.Connlimit{Count: n, Flags: connlimitOver}}})
}

// CountPair updates the counter of the element a . b of set, a counted set
// of PairKeys: the lookup of a constant, for counting a rule's matches in
// a set that a dump reads for all farms at once.
func CountPair(set string, a, b uint32) []expr.Any {
	return slices.Concat(Constant(0, a), Constant(1, b), []expr.Any{&expr.Lookup{SourceRegister: reg1, SetName: set}})
}

// Drop drops the packet.
func Drop() expr.Any { return &expr.Verdict{Kind: expr.VerdictDrop} }

// SetCtHelper gives the connection the ct helper object name:
// ct helper set "NAME".
func SetCtHelper(name string) expr.Any {
	return &expr.Objref{Type: unix.NFT_OBJECT_CT_HELPER, Name: name}
}

// MatchService matches a packet to a service of set, a counted set keyed
// like the services maps, and counts it in the element:
// ip daddr . meta l4proto . th dport @set.
func MatchService(f Family, set string) []expr.Any {
	return append(loadService(f), &expr.Lookup{SourceRegister: reg1, SetName: set})
}
