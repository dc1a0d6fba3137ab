package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// Variant names, in the order they run within a repetition.
const (
	varL4nft          = "l4nft"
	varIptablesLegacy = "iptables-legacy"
	varIptablesNft    = "iptables-nft"
	varFloor          = "floor"
	varDirect         = "direct"
	// l4nft with another scheduler, or with persistence, on every farm:
	// the per-connection cost of each farm option against the same floor.
	varL4nftRoundRobin = "l4nft-roundrobin"
	varL4nftHash       = "l4nft-hash"
	varL4nftSymHash    = "l4nft-symhash"
	varL4nftConsistent = "l4nft-consistent"
	varL4nftPersist    = "l4nft-persist"
)

// allVariants is every data-plane variant, in run order.
var allVariants = []string{varL4nft, varIptablesLegacy, varIptablesNft, varFloor, varDirect,
	varL4nftRoundRobin, varL4nftHash, varL4nftSymHash, varL4nftConsistent, varL4nftPersist}

// defaultVariants run unless -variants says otherwise: the scheduler
// variants are asked for by name.
var defaultVariants = allVariants[:5]

// farmOption is the option each l4nft variant sets on every farm.
var farmOption = map[string]func(*lb.Farm){
	varL4nft:           func(*lb.Farm) {},
	varL4nftRoundRobin: func(f *lb.Farm) { f.Scheduler = lb.RoundRobin },
	varL4nftHash:       func(f *lb.Farm) { f.Scheduler = lb.Hash; f.HashFields = []lb.HashField{lb.SrcIP, lb.SrcPort} },
	varL4nftSymHash:    func(f *lb.Farm) { f.Scheduler = lb.SymHash },
	varL4nftConsistent: func(f *lb.Farm) { f.Scheduler = lb.Consistent; f.HashFields = []lb.HashField{lb.SrcIP, lb.SrcPort} },
	// By source address and port, so that every connection of the run
	// is a new entry: the cost of the lookup, the check and the add.
	varL4nftPersist: func(f *lb.Farm) {
		f.Persistence = &lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(time.Minute)}
	},
}

// backendPort is the port every backend serves; all farms point at it.
const backendPort = 80

// variant is one way of getting a client's connection to a backend, with a
// test bed of its own: each variant's balancer namespace only ever holds its
// own rules, so no variant pays for another's leftovers (legacy iptables
// tables, once created in a namespace, stay hooked until it is destroyed).
type variant struct {
	name string
	bed  *testbed.Topology
	inst installer
}

// installer puts a variant's rules in the balancer namespace.
type installer interface {
	// install makes the balancer serve farms, replacing what it served.
	install(ctx context.Context, farms []farm) error
	// target is where a client connects to reach the last farm.
	target(farms []farm) netip.AddrPort
	// close releases what install opened; the rules stay.
	close() error
}

// newBed builds a test bed with one client and n backends serving
// backendPort, and widens the client's ephemeral port range.
func newBed(ctx context.Context, backends int) (*testbed.Topology, error) {
	bed, err := testbed.New(ctx, testbed.Options{Clients: 1, Backends: backends, Ports: []uint16{backendPort}})
	if err != nil {
		return nil, err
	}
	if err := bed.Clients[0].SetSysctl("net.ipv4.ip_local_port_range", "1024 65535"); err != nil {
		return nil, errors.Join(err, bed.Close())
	}
	return bed, nil
}

// bedBackends returns the bed's backends with the given weights.
func bedBackends(bed *testbed.Topology, weights ...int) []backend {
	out := make([]backend, len(weights))
	for i, w := range weights {
		b := bed.Backends[i]
		out[i] = backend{Name: b.Name(), Addr: b.Addr4, Port: backendPort, Weight: w}
	}
	return out
}

// newVariant builds the named variant on a fresh test bed.
func newVariant(ctx context.Context, name string, backends int) (*variant, error) {
	bed, err := newBed(ctx, backends)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	v := &variant{name: name, bed: bed}
	switch option, isL4nft := farmOption[name]; {
	case isL4nft:
		v.inst = &l4nftInstaller{ns: bed.Balancer.Namespace, option: option}
	case name == varIptablesLegacy:
		v.inst = &iptablesInstaller{ns: bed.Balancer.Namespace, restore: "iptables-legacy-restore"}
	case name == varIptablesNft:
		v.inst = &iptablesInstaller{ns: bed.Balancer.Namespace, restore: "iptables-nft-restore"}
	case name == varFloor:
		v.inst = &floorInstaller{ns: bed.Balancer.Namespace}
	case name == varDirect:
		v.inst = directInstaller{}
	default:
		return nil, errors.Join(fmt.Errorf("unknown variant %q", name), bed.Close())
	}
	return v, nil
}

// close releases the variant and tears its test bed down.
func (v *variant) close() error {
	return errors.Join(v.inst.close(), v.bed.Close())
}

// l4nftInstaller applies farms with the lb library, each farm changed by
// option.
type l4nftInstaller struct {
	ns     *testbed.Namespace
	bal    *lb.Balancer
	option func(*lb.Farm)
}

func (l *l4nftInstaller) install(ctx context.Context, farms []farm) error {
	if l.bal == nil {
		b, err := lb.Open(ctx, lb.Options{NetNS: nft.NetNSFd(l.ns.Fd())})
		if err != nil {
			return err
		}
		l.bal = b
	}
	s := lbState(farms)
	for i := range s.Farms {
		l.option(&s.Farms[i])
	}
	_, err := l.bal.Apply(ctx, s)
	return err
}

func (l *l4nftInstaller) target(farms []farm) netip.AddrPort {
	f := farms[len(farms)-1]
	return netip.AddrPortFrom(f.VIP, f.Port)
}

func (l *l4nftInstaller) close() error {
	if l.bal == nil {
		return nil
	}
	return l.bal.Close()
}

// iptablesInstaller loads the seed design with an iptables-restore.
type iptablesInstaller struct {
	ns      *testbed.Namespace
	restore string
}

func (i *iptablesInstaller) install(ctx context.Context, farms []farm) error {
	_, err := runIn(ctx, i.ns, seedRules(farms), i.restore)
	return err
}

func (i *iptablesInstaller) target(farms []farm) netip.AddrPort {
	f := farms[len(farms)-1]
	return netip.AddrPortFrom(f.VIP, f.Port)
}

func (i *iptablesInstaller) close() error { return nil }

// floorInstaller installs the least any NAT balancer does: one static DNAT
// rule to the last farm's first backend and one SNAT rule back to the VIP,
// in nftables (`nft -f`).
type floorInstaller struct{ ns *testbed.Namespace }

// floorRules is the floor's ruleset for the last farm.
func floorRules(farms []farm) string {
	f := farms[len(farms)-1]
	b := f.Backends[0]
	return fmt.Sprintf(`flush ruleset
table ip floor {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport %d dnat to %s:%d
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr %s tcp dport %d snat to %s
	}
}
`, f.VIP, f.Port, b.Addr, b.Port, b.Addr, b.Port, f.VIP)
}

func (fl *floorInstaller) install(ctx context.Context, farms []farm) error {
	_, err := runIn(ctx, fl.ns, floorRules(farms), "nft", "-f", "-")
	return err
}

func (fl *floorInstaller) target(farms []farm) netip.AddrPort {
	f := farms[len(farms)-1]
	return netip.AddrPortFrom(f.VIP, f.Port)
}

func (fl *floorInstaller) close() error { return nil }

// directInstaller installs nothing: the client connects to the first
// backend's own address, routed through the balancer, which then has no
// netfilter hook (and so no conntrack) at all.
type directInstaller struct{}

func (directInstaller) install(context.Context, []farm) error { return nil }

func (directInstaller) target(farms []farm) netip.AddrPort {
	b := farms[len(farms)-1].Backends[0]
	return netip.AddrPortFrom(b.Addr, b.Port)
}

func (directInstaller) close() error { return nil }
