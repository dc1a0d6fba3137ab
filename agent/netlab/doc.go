// Package netlab builds throwaway network namespaces - a client, a
// balancer, backends that answer with their own name - for `l4nft demo` and
// for l4nft's tests, and always tears them down again. The namespaces are
// unnamed by default, kept alive only by open file descriptors, so nothing
// outlives the process.
//
// Helpers that take a testing.TB (ForTest, NamespaceForTest) live in
// integration/testbed, which also re-exports this package's API.
//
// # Topology
//
//	 client0          client1   ...          backend0          backend1   ...
//	 192.0.2.2        192.0.2.3              203.0.113.10      203.0.113.11
//	 2001:db8:c::2    2001:db8:c::3          2001:db8:b::10    2001:db8:b::11
//	 [eth0]           [eth0]                 [eth0]            [eth0]
//	    |  veth          |                      |  veth           |
//	+---|----------------|----------------------|-----------------|-------+
//	| [vc0]            [vc1]                  [vb0]             [vb1]     |
//	|    \_____   _____/                         \_____   _____/          |
//	|       [br-clients]                           [br-backends]          |
//	|       192.0.2.1/24                           203.0.113.1/24         |
//	|       2001:db8:c::1/64          lb           2001:db8:b::1/64       |
//	|                        [lo] + VIPs (AddVIP)                         |
//	+---------------------------------------------------------------------+
//
// Every client, every backend and the balancer ("lb", the big box) is its
// own network namespace. The balancer forwards IPv4 and IPv6; clients and
// backends have IPv4 and IPv6 default routes via the balancer, so a client
// reaches both a backend's own address and any VIP through the balancer,
// where l4nft's ruleset applies.
//
// # Address plan
//
// Only documentation ranges are used:
//
//	clients    192.0.2.0/24     2001:db8:c::/64   balancer .1 / ::1, client i: .(2+i) / ::(2+i)
//	backends   203.0.113.0/24   2001:db8:b::/64   balancer .1 / ::1, backend i: .(10+i) / ::(10+i)
//	VIPs       198.51.100.0/24  2001:db8:f::/64   on the balancer's loopback (AddVIP)
//
// The last group of an IPv6 address repeats the decimal digits of the last
// IPv4 octet (backend 3 is 203.0.113.13 and 2001:db8:b::13), so the two are
// easy to match when reading a trace. Use the Addr4 and Addr6 fields rather
// than recomputing them.
//
// IPv6 duplicate address detection is off in every namespace, so addresses
// are usable as soon as New returns.
//
// # Network namespaces
//
// Namespaces are unnamed by default: each is kept alive only by an open file
// descriptor (Namespace.Fd), so it vanishes by itself if the process dies.
// With Options.Named each is also bind-mounted under /run/netns, as
// `ip netns add` does, with a unique name such as "l4nft-1a2b3c4d-lb";
// Close unmounts and removes those files.
//
// Nothing is ever changed in the namespace the process started in: links are
// created through netlink sockets opened inside the target namespaces, and
// sysctls are written from an OS thread switched into the namespace.
//
// Code that must run inside a namespace goes through Namespace.Do, which runs
// it on a locked OS thread switched into the namespace and switches back
// afterwards. Sockets keep the namespace they were created in, so a listener
// or connection made inside Do can be used from any goroutine later; but a
// goroutine started inside Do runs in the original namespace.
//
// # Traffic
//
// Every backend serves TCP and UDP on Options.Ports, IPv4 and IPv6. A TCP
// server greets each connection with "<backend> <client-ip:port>\n" and then
// answers each line it reads with "<backend>\n"; a UDP server answers every
// datagram with "<backend> <client-ip:port>\n". Client.Ask, Client.Dial and
// Client.Spread speak that protocol, so a test can assert which backend served
// a connection and which source address the backend saw.
//
// # Debugging
//
// Start the topology with Options.Named and inspect it while a test is paused:
//
//	ip netns list | grep l4nft
//	ip netns exec l4nft-1a2b3c4d-lb nft list ruleset
//
// Namespace.Command runs a program inside a namespace (named or not) through
// nsenter(1).
package netlab
