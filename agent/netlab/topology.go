package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// Address plan; see the package documentation.
const (
	ClientPrefix4  = "192.0.2.0/24"
	ClientPrefix6  = "2001:db8:c::/64"
	BackendPrefix4 = "203.0.113.0/24"
	BackendPrefix6 = "2001:db8:b::/64"
	// VIPPrefix4 and VIPPrefix6 hold the addresses the demo and the tests use as VIPs.
	VIPPrefix4 = "198.51.100.0/24"
	VIPPrefix6 = "2001:db8:f::/64"
)

// Limits of Options, set by the address plan.
const (
	MaxClients  = 100
	MaxBackends = 200
)

// Interface names in the balancer namespace. Clients and backends each have
// a single interface named "eth0"; its peer in the balancer namespace is
// "vc<i>" for client i and "vb<i>" for backend i.
const (
	ClientBridge  = "br-clients"
	BackendBridge = "br-backends"
)

// DefaultTimeout bounds an operation whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// Options configure New. The zero value gives one client, two backends
// serving port 80, and unnamed namespaces.
type Options struct {
	// Clients is the number of client namespaces, up to MaxClients; 0 means 1.
	Clients int
	// Backends is the number of backend namespaces, up to MaxBackends; 0 means 2.
	Backends int
	// Ports lists the ports on which every backend serves TCP and UDP over
	// IPv4 and IPv6; nil means port 80. PortRange expands a range.
	Ports []uint16
	// Named also bind-mounts every namespace under BindMountDir as
	// "<Prefix>-<ID>-<role>", e.g. "l4nft-1a2b3c4d-lb", so that tools taking
	// a namespace name (ip netns exec, l4nft --netns) can use it.
	Named bool
	// Prefix starts the name of every named namespace; "" means "l4nft".
	Prefix string
}

// PortRange returns the ports first through last, for Options.Ports.
func PortRange(first, last uint16) []uint16 {
	var ports []uint16
	for p := int(first); p <= int(last); p++ {
		ports = append(ports, uint16(p))
	}
	return ports
}

func (o Options) withDefaults() (Options, error) {
	if o.Clients == 0 {
		o.Clients = 1
	}
	if o.Backends == 0 {
		o.Backends = 2
	}
	if o.Ports == nil {
		o.Ports = []uint16{80}
	}
	if o.Prefix == "" {
		o.Prefix = "l4nft"
	}
	switch {
	case o.Clients < 0 || o.Clients > MaxClients:
		return o, fmt.Errorf("invalid options: %d clients, want 1 to %d", o.Clients, MaxClients)
	case o.Backends < 0 || o.Backends > MaxBackends:
		return o, fmt.Errorf("invalid options: %d backends, want 1 to %d", o.Backends, MaxBackends)
	case slices.Contains(o.Ports, 0):
		return o, errors.New("invalid options: port 0 in Ports")
	}
	o.Ports = slices.Compact(slices.Sorted(slices.Values(o.Ports)))
	return o, nil
}

// Topology is a running lab: a balancer namespace with clients on one
// side and backends on the other. Close tears it down.
type Topology struct {
	// ID is random and part of every namespace name when Options.Named is set.
	ID       string
	Balancer *Balancer
	Clients  []*Client
	Backends []*Backend

	closeOnce sync.Once
	closeErr  error
}

// Balancer is the namespace in the middle, where l4nft runs. It forwards
// IPv4 and IPv6. Its fields must not be modified.
type Balancer struct {
	*Namespace
	// ClientAddr4 and ClientAddr6 (192.0.2.1, 2001:db8:c::1) are on
	// ClientBridge and are the clients' default gateways.
	ClientAddr4, ClientAddr6 netip.Addr
	// BackendAddr4 and BackendAddr6 (203.0.113.1, 2001:db8:b::1) are on
	// BackendBridge and are the backends' default gateways.
	BackendAddr4, BackendAddr6 netip.Addr
}

// Client is a namespace that originates traffic. Its fields must not be
// modified.
type Client struct {
	*Namespace
	// Addr4 and Addr6 are the client's addresses: 192.0.2.(2+i) and
	// 2001:db8:c::(2+i) for client i.
	Addr4, Addr6 netip.Addr

	mu    sync.Mutex
	conns map[*Conn]struct{} // open connections, closed by Topology.Close
}

// Backend is a namespace running the TCP and UDP servers. Its name (e.g.
// "backend0") is what its servers answer. Its fields must not be modified.
type Backend struct {
	*Namespace
	// Addr4 and Addr6 are the backend's addresses: 203.0.113.(10+i) and
	// 2001:db8:b::(10+i) for backend i.
	Addr4, Addr6 netip.Addr
	// Ports are the ports the servers listen on, sorted.
	Ports []uint16

	srv servers
}

// planAddrs returns host number host in the given /24 and /64, the IPv6 one
// spelling the same decimal digits (see the package documentation).
func planAddrs(net4, net6 string, host int) (netip.Addr, netip.Addr) {
	return netip.MustParseAddr(fmt.Sprintf("%s%d", net4, host)),
		netip.MustParseAddr(fmt.Sprintf("%s%d", net6, host))
}

// New builds the topology described in the package documentation and starts
// the backends' servers. On error, everything created so far is removed. ctx
// bounds the construction (DefaultTimeout if it has no deadline); the
// topology lives until Close.
//
// Requires root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
func New(ctx context.Context, opts Options) (*Topology, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	var id [4]byte
	rand.Read(id[:])
	t := &Topology{ID: hex.EncodeToString(id[:])}
	if err := t.build(ctx, opts); err != nil {
		return nil, errors.Join(fmt.Errorf("building topology %s: %w", t.ID, err), t.Close())
	}
	return t, nil
}

// build creates everything; t records each piece as it is made, so that
// Close can remove a partial topology.
func (t *Topology) build(ctx context.Context, opts Options) error {
	newNS := func(role string) (*Namespace, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var name string
		if opts.Named {
			name = fmt.Sprintf("%s-%s-%s", opts.Prefix, t.ID, role)
		}
		return NewNamespace(role, name)
	}
	lb, err := newNS("lb")
	if err != nil {
		return err
	}
	t.Balancer = &Balancer{Namespace: lb}
	t.Balancer.ClientAddr4, t.Balancer.ClientAddr6 = planAddrs("192.0.2.", "2001:db8:c::", 1)
	t.Balancer.BackendAddr4, t.Balancer.BackendAddr6 = planAddrs("203.0.113.", "2001:db8:b::", 1)
	for i := range opts.Clients {
		ns, err := newNS(fmt.Sprintf("client%d", i))
		if err != nil {
			return err
		}
		c := &Client{Namespace: ns, conns: map[*Conn]struct{}{}}
		c.Addr4, c.Addr6 = planAddrs("192.0.2.", "2001:db8:c::", 2+i)
		t.Clients = append(t.Clients, c)
	}
	for i := range opts.Backends {
		ns, err := newNS(fmt.Sprintf("backend%d", i))
		if err != nil {
			return err
		}
		b := &Backend{Namespace: ns, Ports: slices.Clone(opts.Ports)}
		b.Addr4, b.Addr6 = planAddrs("203.0.113.", "2001:db8:b::", 10+i)
		t.Backends = append(t.Backends, b)
	}

	if err := t.wire(ctx); err != nil {
		return err
	}
	for _, b := range t.Backends {
		if err := b.StartServers(); err != nil {
			return err
		}
	}
	return nil
}

// wire sets sysctls, creates the links, addresses and routes, and waits until
// every link is up.
func (t *Topology) wire(ctx context.Context) error {
	for _, n := range t.Namespaces() {
		// Links take their IPv6 settings from "default" when created.
		for _, key := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
			if err := n.SetSysctl(key, "0"); err != nil {
				return err
			}
		}
	}
	lb := t.Balancer
	for _, key := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := lb.SetSysctl(key, "1"); err != nil {
			return err
		}
	}

	type leaf struct {
		ns     *Namespace
		peer   string // interface name in the balancer
		bridge string
		a4, a6 netip.Addr
		gw4    netip.Addr
		gw6    netip.Addr
	}
	var leaves []leaf
	for i, c := range t.Clients {
		leaves = append(leaves, leaf{c.Namespace, fmt.Sprintf("vc%d", i), ClientBridge, c.Addr4, c.Addr6, lb.ClientAddr4, lb.ClientAddr6})
	}
	for i, b := range t.Backends {
		leaves = append(leaves, leaf{b.Namespace, fmt.Sprintf("vb%d", i), BackendBridge, b.Addr4, b.Addr6, lb.BackendAddr4, lb.BackendAddr6})
	}

	err := lb.withNetlink(func(h *netlink.Handle) error {
		bridges := map[string][]netip.Prefix{
			ClientBridge:  {netip.PrefixFrom(lb.ClientAddr4, 24), netip.PrefixFrom(lb.ClientAddr6, 64)},
			BackendBridge: {netip.PrefixFrom(lb.BackendAddr4, 24), netip.PrefixFrom(lb.BackendAddr6, 64)},
		}
		index := map[string]int{}
		for _, name := range []string{ClientBridge, BackendBridge} {
			snooping := false
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: &snooping}); err != nil {
				return fmt.Errorf("creating bridge %s: %w", name, err)
			}
			br, err := h.LinkByName(name)
			if err != nil {
				return fmt.Errorf("finding bridge %s: %w", name, err)
			}
			if err := addAddrs(h, br, bridges[name]...); err != nil {
				return err
			}
			if err := h.LinkSetUp(br); err != nil {
				return fmt.Errorf("setting bridge %s up: %w", name, err)
			}
			index[name] = br.Attrs().Index
		}
		for _, l := range leaves {
			if err := ctx.Err(); err != nil {
				return err
			}
			veth := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: l.peer, MasterIndex: index[l.bridge]},
				PeerName:      "eth0",
				PeerNamespace: netlink.NsFd(l.ns.Fd()),
			}
			if err := h.LinkAdd(veth); err != nil {
				return fmt.Errorf("creating veth %s to %s: %w", l.peer, l.ns.Name(), err)
			}
			if err := h.LinkSetUp(veth); err != nil {
				return fmt.Errorf("setting %s up: %w", l.peer, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", lb.Name(), err)
	}

	for _, l := range leaves {
		err := l.ns.withNetlink(func(h *netlink.Handle) error {
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				return fmt.Errorf("finding eth0: %w", err)
			}
			if err := addAddrs(h, eth0, netip.PrefixFrom(l.a4, 24), netip.PrefixFrom(l.a6, 64)); err != nil {
				return err
			}
			if err := h.LinkSetUp(eth0); err != nil {
				return fmt.Errorf("setting eth0 up: %w", err)
			}
			return addDefaultRoutes(h, eth0, l.gw4, l.gw6)
		})
		if err != nil {
			return fmt.Errorf("%s: %w", l.ns.Name(), err)
		}
	}

	// Links report carrier asynchronously; wait for all of them.
	for _, l := range leaves {
		if err := waitOperUp(ctx, l.ns, "eth0"); err != nil {
			return err
		}
	}
	for _, name := range []string{ClientBridge, BackendBridge} {
		if err := waitOperUp(ctx, lb.Namespace, name); err != nil {
			return err
		}
	}
	return nil
}

func waitOperUp(ctx context.Context, n *Namespace, link string) error {
	err := Eventually(ctx, 5*time.Millisecond, func(context.Context) error {
		return n.withNetlink(func(h *netlink.Handle) error {
			l, err := h.LinkByName(link)
			if err != nil {
				return err
			}
			if s := l.Attrs().OperState; s != netlink.OperUp {
				return fmt.Errorf("operational state %s", s)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("%s: waiting for %s to come up: %w", n.Name(), link, err)
	}
	return nil
}

// Namespaces returns all namespaces of the topology: the balancer, the
// clients, then the backends.
func (t *Topology) Namespaces() []*Namespace {
	var all []*Namespace
	if t.Balancer != nil {
		all = append(all, t.Balancer.Namespace)
	}
	for _, c := range t.Clients {
		all = append(all, c.Namespace)
	}
	for _, b := range t.Backends {
		all = append(all, b.Namespace)
	}
	return all
}

// Close stops the servers, closes the clients' connections and releases
// every namespace (unmounting named ones). It is idempotent and safe after a
// partial construction; later calls return the first call's result.
func (t *Topology) Close() error {
	t.closeOnce.Do(func() {
		var errs []error
		for _, b := range t.Backends {
			b.StopServers()
		}
		for _, c := range t.Clients {
			c.closeConns()
		}
		for _, n := range t.Namespaces() {
			errs = append(errs, n.Close())
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// AddVIP adds vip to the balancer's loopback interface as a /32 or /128, so
// the balancer accepts traffic for it. Use addresses from VIPPrefix4
// and VIPPrefix6. Adding an address twice fails.
func (b *Balancer) AddVIP(vip netip.Addr) error {
	return b.changeVIP(vip, true)
}

// RemoveVIP removes a VIP added by AddVIP.
func (b *Balancer) RemoveVIP(vip netip.Addr) error {
	return b.changeVIP(vip, false)
}

func (b *Balancer) changeVIP(vip netip.Addr, add bool) error {
	op := "adding"
	if !add {
		op = "removing"
	}
	vip = vip.Unmap()
	if !vip.IsValid() {
		return fmt.Errorf("%s: %s VIP: invalid address", b.Name(), op)
	}
	err := b.withNetlink(func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		a := netlinkAddr(netip.PrefixFrom(vip, vip.BitLen()))
		if add {
			return h.AddrAdd(lo, a)
		}
		return h.AddrDel(lo, a)
	})
	if err != nil {
		return fmt.Errorf("%s: %s VIP %s: %w", b.Name(), op, vip, err)
	}
	return nil
}
