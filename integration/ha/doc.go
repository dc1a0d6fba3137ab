// Package ha holds l4nft's high-availability tests: an active/standby pair
// of balancers whose virtual addresses are moved by keepalived (VRRP) and
// whose connection-tracking state is copied by conntrackd (FTFW), with real
// daemons and real traffic in network namespaces. The package has no code of
// its own; the tests are the point. They need root and Debian's keepalived
// and conntrackd (integration/test.sh installs them).
//
// # Topology
//
//	                   client 198.51.100.2
//	                         |
//	  br-front (switch ns) 198.51.100.0/24, VIP 198.51.100.250
//	       |                                 |
//	A front .11  <-- VRRP (unicast) -->  B front .12
//	A sync 192.0.2.1 <-- conntrackd --> B sync 192.0.2.2  (direct veth)
//	A back  .11                          B back  .12
//	       |                                 |
//	  br-back (switch ns) 203.0.113.0/24, gateway 203.0.113.1
//	       |               |               |
//	backend0 .20     backend1 .21     backend2 .22   (backend3 .23)
//
// The VIP and the backends' gateway are keepalived's virtual addresses;
// backends route everything through the gateway.
//
// Each box is a network namespace; the two bridges live in a "switch"
// namespace of their own, so taking a balancer's links down is seen by the
// others as a dead node. Both balancers carry the same l4nft configuration
// (through the lb library, one Balancer per namespace). keepalived and
// conntrackd run inside the balancers' namespaces with configuration, pid
// files, sockets and lock files in the test's temporary directory; they are
// stopped (their whole process group) when the test ends, also on failure.
//
// The keepalived notify script under test is the shipped one,
// agent/examples/ha/l4nft-ha-notify.sh.
//
// # Debugging
//
// HA_KEEP_LOGS=1 prints every daemon's log at the end of each test, not only
// on failure.
package ha
