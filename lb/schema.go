package lb

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/l4nft/l4nft/nft"
)

// schemaVersion changes whenever the table's layout does; a Balancer that
// finds another version (or other options baked into the layout) replaces
// the table atomically on its next Apply.
const schemaVersion = 1

// The table's sets and maps. Farms and backends are elements of these;
// the only per-farm kernel object is the farm's chain.
var (
	service4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	service6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	target4  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	target6  = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)

	// services: address . protocol . port -> jump to the farm's chain.
	setServices4      = nft.Set{Name: "services4", Key: service4, Data: nftables.TypeVerdict, Concat: true}
	setServices6      = nft.Set{Name: "services6", Key: service6, Data: nftables.TypeVerdict, Concat: true}
	setServiceRanges4 = nft.Set{Name: "service_ranges4", Key: service4, Data: nftables.TypeVerdict, Concat: true, Interval: true}
	setServiceRanges6 = nft.Set{Name: "service_ranges6", Key: service6, Data: nftables.TypeVerdict, Concat: true, Interval: true}
	// dnat: backend mark -> address . port (or address alone, keeping the
	// client's port). The element counters count new connections.
	setDNAT4     = nft.Set{Name: "dnat4", Key: nftables.TypeMark, Data: target4, Counter: true}
	setDNAT6     = nft.Set{Name: "dnat6", Key: nftables.TypeMark, Data: target6, Counter: true}
	setDNATAddr4 = nft.Set{Name: "dnat_addr4", Key: nftables.TypeMark, Data: nftables.TypeIPAddr, Counter: true}
	setDNATAddr6 = nft.Set{Name: "dnat_addr6", Key: nftables.TypeMark, Data: nftables.TypeIP6Addr, Counter: true}
	// snat: backend mark -> source address (NAT mode with Farm.Source).
	setSNAT4 = nft.Set{Name: "snat4", Key: nftables.TypeMark, Data: nftables.TypeIPAddr}
	setSNAT6 = nft.Set{Name: "snat6", Key: nftables.TypeMark, Data: nftables.TypeIP6Addr}
	// masquerade: backend marks of NAT-mode farms without a Source.
	setMasquerade = nft.Set{Name: "masq_backends", Key: nftables.TypeMark}
	// traffic: backend marks; the element counters count every packet
	// and byte of the backend's connections, both directions.
	setTraffic = nft.Set{Name: "traffic", Key: nftables.TypeMark, Counter: true}
	// backends: backend mark -> nothing; the comment records the
	// backend's name, weight and state so a new process can adopt the
	// table. Kept apart from the counted sets so that changing a weight
	// does not reset a counter.
	setBackends = nft.Set{Name: "backends", Key: nftables.TypeMark}
	// schema: one element whose comment records the layout version and
	// the options baked into it.
	setSchema = nft.Set{Name: "schema", Key: nftables.TypeMark}
)

// allSets is every set of the table, in creation order.
var allSets = []nft.Set{
	setServices4, setServiceRanges4, setServices6, setServiceRanges6,
	setDNAT4, setDNATAddr4, setDNAT6, setDNATAddr6,
	setSNAT4, setSNAT6, setMasquerade, setTraffic, setBackends, setSchema,
}

// schemaComment is the comment of the schema element for these options.
func schemaComment(o Options) string {
	return fmt.Sprintf("l4nft schema=%d mark_mask=%s local=%t", schemaVersion, markText(o.MarkMask), o.LocalConnections)
}

// Base chain names.
const (
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainDNAT       = "nat_prerouting"
	chainDNATOutput = "nat_output"
	chainSNAT       = "nat_postrouting"
	farmChainPrefix = "farm_"
	priorityMangle  = nftables.ChainPriority(-150)
	priorityDstNAT  = nftables.ChainPriority(-100)
	prioritySrcNAT  = nftables.ChainPriority(100)
)

func farmChain(farm string) string { return farmChainPrefix + farm }
