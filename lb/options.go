package lb

import (
	"log/slog"
	"math/bits"

	"github.com/l4nft/l4nft/nft"
)

// DefaultTable is the table a Balancer owns when Options.Table is empty.
const DefaultTable = "l4nft"

// DefaultMarkMask is the conntrack mark bits a Balancer uses when
// Options.MarkMask is zero: 24 bits, room for 16,777,215 farms and
// backends. Marks are derived from names (see Balancer), and a wide range
// keeps two names from meeting on one mark: at 30,000 farms and backends,
// about 27 pairs meet, each resolved by order of installation.
const DefaultMarkMask uint32 = 0xffffff00

// Options configure a Balancer. The zero value is usable.
type Options struct {
	// Table is the name of the inet table the balancer owns; it never
	// touches any other. Default DefaultTable.
	Table string
	// NetNS is the network namespace to act in. Default: the namespace of
	// the thread that calls Open.
	NetNS NetNS
	// MarkMask is the contiguous range of conntrack-mark bits the balancer
	// may use to remember each connection's backend; every other bit of
	// the mark is preserved, and the packet mark is never written. The
	// number of farms plus backends is limited to 2^bits - 1. Default DefaultMarkMask.
	MarkMask uint32
	// LocalConnections balances connections started on the balancer host
	// itself (the output hook) as well as those passing through it.
	LocalConnections bool
	// FlushConntrack cuts the established connections of a backend that
	// is removed or set Down, by deleting its conntrack entries. Without
	// it they continue until they end.
	FlushConntrack bool
	// Logger receives one line per change applied. Default: discard.
	Logger *slog.Logger
	// StateFile, if set, is where Close leaves what the Balancer knows is
	// installed, with the namespace's identity and ruleset generation.
	// Open trusts it instead of reading the table back (about 1 s per
	// 130,000 elements) when the namespace, table and generation are
	// still those, that is when nothing at all changed in the namespace's
	// ruleset since. Anything else, or a file that cannot be read, costs
	// the full read-back and nothing more.
	StateFile string
}

func (o Options) withDefaults() Options {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.MarkMask == 0 {
		o.MarkMask = DefaultMarkMask
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// check validates the options alone.
func (o Options) check() error { return Validate(State{}, o) }

// contiguous reports whether m is one run of set bits.
func contiguous(m uint32) bool {
	return m != 0 && bits.OnesCount32(m) == 32-bits.LeadingZeros32(m)-bits.TrailingZeros32(m)
}

// markShift and maxBackends describe the mark range.
func (o Options) markShift() int { return bits.TrailingZeros32(o.MarkMask) }

// MaxMarks is how many farms and backends, together, the mark range can
// tell apart.
func (o Options) MaxMarks() int {
	return 1<<bits.OnesCount32(o.withDefaults().MarkMask) - 1
}

// NetNS names the network namespace a Balancer acts in; the zero value is
// the namespace of the thread that calls Open. A closed or wrong
// descriptor, or a path or name that is not a network namespace, makes
// Open fail: it never falls back to the host's namespace.
type NetNS = nft.NetNS

// NetNSName names a namespace made by `ip netns add NAME` (/run/netns/NAME).
func NetNSName(name string) NetNS { return nft.NetNSName(name) }

// NetNSPath names a namespace by a path, such as /proc/PID/ns/net.
func NetNSPath(path string) NetNS { return nft.NetNSPath(path) }

// NetNSFd names a namespace by an open descriptor, which Open duplicates.
func NetNSFd(fd int) NetNS { return nft.NetNSFd(fd) }
