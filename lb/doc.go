// Package lb is the l4nft load-balancing library: describe farms and
// backends as a State, and a Balancer makes the kernel's nftables match it.
//
// A farm is a virtual service (an address and ports of TCP, UDP or SCTP,
// or every protocol to the address) whose new connections are spread over
// backends by a Scheduler: weighted random (the default), weighted round
// robin, a hash of chosen fields, a symmetric hash, or a Maglev table
// (consistent hashing). A farm may also have Persistence (session
// affinity with a TTL), Limits on new connections in all and per client,
// allow and deny lists, TCPStrict, conntrack Helpers, and backends with
// a Priority or MaxConnections. In NAT
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
// difference between what is installed and what is wanted (see below for
// how it is split into transactions; the kernel applies each whole or not
// at all). Applying what is installed sends nothing; changing one backend
// sends that backend's set elements and its farm's new schedule, whatever
// the number of farms.
//
// # The ruleset
//
// The balancer owns one inet table (Options.Table) and touches nothing
// else. Farms and backends are elements of shared maps; there is no kernel
// object per farm. A new connection takes its farm's mark from a hash map
// on address . protocol . port (or, only if no farm serves that port, from
// one on the address alone, which holds the farms of every protocol), then
// its backend's mark from an interval
// map on farm mark . random slot, where each available backend owns a
// share of the farm's 2^24 slots in proportion to its weight: the seed's
// cascade of `statistic --mode random` rules in one lookup. The farm's
// ranges live in one of 64 such maps, picked by a verdict map on the farm
// mark's low bits, because the kernel's commit of a change to an interval
// map costs in proportion to the whole map.
//
// A farm whose options put values in rules (a round robin's cycle, a
// hash's fields, a persistence TTL, a rate) has a chain of its own
// (farmchain.go), reached through the farm_chains verdict map and
// versioned by the farm mark like its schedule; its lists, persistence
// entries, rejection counters and Maglev table are elements of shared
// sets keyed by a lasting farm id that, unlike the farm mark, never
// changes. Farms without such options have no chain. The mark is
// the conntrack mark, within Options.MarkMask, written at hook priority
// -199 where a new connection's mark is still 0, so other users' bits are
// kept; the packet mark is never written. NAT chains read the mark and
// rewrite addresses from maps keyed by it. Render prints the ruleset in nft
// syntax, each rule commented with the iptables rule it replaces.
//
// # Marks
//
// Every backend has a conntrack mark for its life, derived from its farm's
// and its own name (see Options.MarkMask): the same configuration gives
// the same backend marks on every node and after every rebuild, so
// conntrack entries synced from another balancer name the same backends
// here. A farm's mark, which a connection carries only while its backend
// is being chosen, changes with every change of the farm's schedule.
//
// # Changes without refused connections
//
// A change goes to the kernel over one lasting netlink socket in up to
// three transactions: first the elements nothing refers to yet (a new
// backend's; a farm's new schedule, under a new farm mark), then those
// that re-point traffic (the farm's services, to the new farm mark), last
// those nothing refers to any more (the old schedule, a removed backend's
// elements). An interval map does not take the deletion and re-addition
// of overlapping ranges in one transaction (EEXIST), hence the new mark. The kernel does not make one transaction's
// changes to hash and interval sets visible at the same instant, so a
// new connection could otherwise meet a schedule that names a backend
// whose elements are not there yet. Each transaction is atomic and each
// leaves a complete ruleset. SetFarm and RemoveFarm change one farm at a
// cost proportional to it; Apply compares every farm of a State first.
//
// # How a change reaches the kernel
//
// One path, whatever the entry point (the agent's file, API and health
// checks all end in Apply, SetFarm or RemoveFarm):
//
//  1. Validate (validate.go) checks a whole State; SetFarm checks one farm
//     alone and its services against the installed farms' through an
//     index (services.go). Every problem is a Problem naming farm,
//     backend and field; nothing is sent if there is one.
//  2. plan (apply.go) compiles each farm that differs from what is
//     installed into set elements (compileFarm, compile.go; the chains,
//     which depend on the options only, are in chains.go), gives marks to
//     new objects (marks.go), diffs old and new elements (diff.go) and
//     queues them into up to three nft.Batch transactions.
//  3. commitPlan sends them over the Balancer's one lasting netlink socket
//     (nft.Conn) and records what was committed; a refused first
//     transaction changes nothing, a later one is finished from a fresh
//     read of the kernel.
//
// Plan and PlanFarm stop after step 2 and return the transactions as data,
// printable in nft syntax.
//
// # Drift
//
// Watch reports another process's change to the table within a second,
// from the kernel's nf_tables notifications. Refresh then reads the table
// back (chains and rules by their comments, sets by kind, every element)
// unless the ruleset generation shows nothing changed, and the next Apply
// repairs the smallest difference: a farm's missing or foreign elements,
// or the whole table in one transaction if its chains, rules or sets are
// not the Balancer's.
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
