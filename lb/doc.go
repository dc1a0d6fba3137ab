// Package lb is the l4nft load-balancing library: describe farms and
// backends as a State, and a Balancer makes the kernel's nftables match it.
//
// A farm is a virtual service (address, ports, TCP and/or UDP) whose new
// connections are spread over backends by weighted random choice. In NAT
// mode the balancer also rewrites the client's address, so replies come
// back through it whatever the backends' routes; in DNAT mode the client's
// address is kept and the balancer must be the backends' gateway. It is the
// L4xNAT design of Zevenet's iptables balancer (see the README), expressed
// natively in nftables and sent over netlink: no nft or iptables binary is
// needed.
//
// # Applying a state
//
// Open adopts the table if another process left one, without disturbing
// traffic. Apply validates the whole State first (a *ValidationError lists
// every problem, each naming farm, backend and field) and then sends the
// difference between what is installed and what is wanted as one atomic
// netlink transaction: the kernel applies all of it or, if it refuses any
// part, none of it. Applying what is installed sends nothing; changing one
// backend sends that backend's set elements and at most a new schedule for
// its farm, whatever the number of farms.
//
// # The ruleset
//
// The balancer owns one inet table (Options.Table) and touches nothing
// else. Farms and backends are elements of shared maps; there is no kernel
// object per farm. A new connection takes its farm's mark from a hash map
// on address . protocol . port, then its backend's mark from an interval
// map on farm mark . random slot, where each available backend owns a
// share of the farm's 2^24 slots in proportion to its weight: the seed's
// cascade of `statistic --mode random` rules in one lookup. The mark is
// the conntrack mark, within Options.MarkMask, written at hook priority
// -199 where a new connection's mark is still 0, so other users' bits are
// kept; the packet mark is never written. NAT chains read the mark and
// rewrite addresses from maps keyed by it. Render prints the ruleset in nft
// syntax, each rule commented with the iptables rule it replaces.
//
// # Changes and garbage
//
// A change to a farm's schedule gives the farm a new mark and a new
// schedule; the old one is left in place, unreferenced, and Collect
// deletes such garbage in one batch (Apply calls it once 4,096 elements
// have built up). The kernel charges a transaction that deletes elements
// a fixed 8-20 ms on the machines measured, where adding costs well under
// a millisecond, so deletions are batched rather than paid per change.
//
// # Counters
//
// Status reports, per backend, the new connections it was given (counters
// on the dnat map elements, which are looked up once per connection) and
// the packets and bytes of its connections in both directions (a per-packet
// lookup in a counted set).
//
// # Requirements
//
// Linux with nf_tables, nf_nat and nf_conntrack (5.x or later; developed
// on 6.18), CAP_NET_ADMIN in the target namespace.
package lb
