package ha

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// Address plan (documentation ranges only; see the package documentation).
var (
	vip        = netip.MustParseAddr("198.51.100.250") // the farm's address, on the front segment
	gateway    = netip.MustParseAddr("203.0.113.1")    // the backends' floating gateway
	clientAddr = netip.MustParseAddr("198.51.100.2")
	frontAddr  = [2]netip.Addr{netip.MustParseAddr("198.51.100.11"), netip.MustParseAddr("198.51.100.12")}
	backAddr   = [2]netip.Addr{netip.MustParseAddr("203.0.113.11"), netip.MustParseAddr("203.0.113.12")}
	syncAddr   = [2]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}
)

// backendAddr is backend i's address: 203.0.113.(20+i).
func backendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, 113, byte(20 + i)}) }

// servicePort is the farm's port; backends serve TCP and UDP on it.
const servicePort = 80

// Interface names inside a balancer namespace.
const (
	ifFront = "front"
	ifBack  = "back"
	ifSync  = "sync"
)

// node is one balancer of the pair.
type node struct {
	name string // "A" or "B"
	idx  int
	ns   *netNS
}

// backendNS is a backend namespace with its servers.
type backendNS struct {
	name string
	addr netip.Addr
	ns   *netNS
	srv  *servers
}

// bed is the HA topology of the package documentation.
type bed struct {
	sw       *netNS
	client   *netNS
	nodes    [2]*node
	backends []*backendNS
	dir      string // the test's temporary directory
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
}

// mustBed builds the topology with n backends and starts their servers.
func mustBed(t *testing.T, n int) *bed {
	t.Helper()
	requireRoot(t)
	b := &bed{dir: t.TempDir()}
	b.sw = mustNamespace(t, "switch")
	b.client = mustNamespace(t, "client")
	for i, name := range []string{"A", "B"} {
		b.nodes[i] = &node{name: name, idx: i, ns: mustNamespace(t, "lb"+name)}
	}
	for i := range n {
		name := fmt.Sprintf("backend%d", i)
		b.backends = append(b.backends, &backendNS{
			name: name,
			addr: backendAddr(i),
			ns:   mustNamespace(t, name),
		})
	}
	if err := b.wire(); err != nil {
		t.Fatalf("failed to wire the HA test bed: %v", err)
	}
	for _, be := range b.backends {
		srv, err := startServers(be.ns, be.name, servicePort)
		if err != nil {
			t.Fatalf("failed to start servers: %v", err)
		}
		t.Cleanup(srv.stop)
		be.srv = srv
	}
	return b
}

func withNetlink(ns *netNS, fn func(h *netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return fmt.Errorf("%s: opening netlink socket: %w", ns.Name(), err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		return fmt.Errorf("%s: %w", ns.Name(), err)
	}
	return nil
}

func addr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

// veth creates a veth pair from ns (name) to peerNS (peerName), with the
// ns end enslaved to master if it is not 0.
func veth(ns *netNS, name string, master int, peerNS *netNS, peerName string) error {
	return withNetlink(ns, func(h *netlink.Handle) error {
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: name, MasterIndex: master},
			PeerName:      peerName,
			PeerNamespace: netlink.NsFd(peerNS.Fd()),
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("creating veth %s to %s: %w", name, peerNS.Name(), err)
		}
		return h.LinkSetUp(v)
	})
}

// configure gives link its addresses, sets it up and adds a default route
// via gw if gw is valid.
func configure(ns *netNS, link string, gw netip.Addr, prefixes ...netip.Prefix) error {
	return withNetlink(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("finding %s: %w", link, err)
		}
		for _, p := range prefixes {
			if err := h.AddrAdd(l, addr(p)); err != nil {
				return fmt.Errorf("adding %s to %s: %w", p, link, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", link, err)
		}
		if gw.IsValid() {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("adding default route via %s: %w", gw, err)
			}
		}
		return nil
	})
}

func (b *bed) wire() error {
	bridges := map[string]int{}
	err := withNetlink(b.sw, func(h *netlink.Handle) error {
		for _, name := range []string{"br-front", "br-back"} {
			snooping := false
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, MulticastSnooping: &snooping}); err != nil {
				return fmt.Errorf("creating bridge %s: %w", name, err)
			}
			br, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if err := h.LinkSetUp(br); err != nil {
				return err
			}
			bridges[name] = br.Attrs().Index
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := veth(b.sw, "client", bridges["br-front"], b.client, "eth0"); err != nil {
		return err
	}
	if err := configure(b.client, "eth0", netip.Addr{}, netip.PrefixFrom(clientAddr, 24)); err != nil {
		return err
	}
	for i, n := range b.nodes {
		for _, kv := range [][2]string{
			{"net.ipv4.ip_forward", "1"},
			{"net.ipv4.conf.all.rp_filter", "0"},
			{"net.ipv4.conf.default.rp_filter", "0"},
		} {
			if err := n.ns.SetSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		if err := veth(b.sw, "f"+n.name, bridges["br-front"], n.ns, ifFront); err != nil {
			return err
		}
		if err := veth(b.sw, "b"+n.name, bridges["br-back"], n.ns, ifBack); err != nil {
			return err
		}
		if err := configure(n.ns, ifFront, netip.Addr{}, netip.PrefixFrom(frontAddr[i], 24)); err != nil {
			return err
		}
		if err := configure(n.ns, ifBack, netip.Addr{}, netip.PrefixFrom(backAddr[i], 24)); err != nil {
			return err
		}
	}
	if err := veth(b.nodes[0].ns, ifSync, 0, b.nodes[1].ns, ifSync); err != nil {
		return err
	}
	for i, n := range b.nodes {
		if err := configure(n.ns, ifSync, netip.Addr{}, netip.PrefixFrom(syncAddr[i], 30)); err != nil {
			return err
		}
	}
	for _, be := range b.backends {
		if err := veth(b.sw, be.name, bridges["br-back"], be.ns, "eth0"); err != nil {
			return err
		}
		if err := configure(be.ns, "eth0", gateway, netip.PrefixFrom(be.addr, 24)); err != nil {
			return err
		}
	}
	type nsLink struct {
		ns   *netNS
		link string
	}
	wait := []nsLink{{b.client, "eth0"}}
	for _, n := range b.nodes {
		wait = append(wait, nsLink{n.ns, ifFront}, nsLink{n.ns, ifBack}, nsLink{n.ns, ifSync})
	}
	for _, be := range b.backends {
		wait = append(wait, nsLink{be.ns, "eth0"})
	}
	for _, w := range wait {
		err := eventually(10*time.Second, func() error {
			return withNetlink(w.ns, func(h *netlink.Handle) error {
				l, err := h.LinkByName(w.link)
				if err != nil {
					return err
				}
				if s := l.Attrs().OperState; s != netlink.OperUp {
					return fmt.Errorf("%s is %s", w.link, s)
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// setLinks sets the node's front and back links (those traffic and VRRP
// use) up or down; down is how a test kills a node. The sync link stays
// as it is unless sync is true.
func (n *node) setLinks(up, sync bool) error {
	links := []string{ifFront, ifBack}
	if sync {
		links = append(links, ifSync)
	}
	return withNetlink(n.ns, func(h *netlink.Handle) error {
		for _, name := range links {
			l, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if up {
				err = h.LinkSetUp(l)
			} else {
				err = h.LinkSetDown(l)
			}
			if err != nil {
				return fmt.Errorf("setting %s up=%v: %w", name, up, err)
			}
		}
		return nil
	})
}

// hasAddr reports whether the node holds a on any link.
func (n *node) hasAddr(a netip.Addr) (bool, error) {
	var found bool
	err := withNetlink(n.ns, func(h *netlink.Handle) error {
		addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, x := range addrs {
			if x.IP.Equal(a.AsSlice()) {
				found = true
			}
		}
		return nil
	})
	return found, err
}

// removeFloating deletes the VIP and the gateway from the node, as a reboot
// would.
func (n *node) removeFloating() error {
	return withNetlink(n.ns, func(h *netlink.Handle) error {
		for link, a := range map[string]netip.Addr{ifFront: vip, ifBack: gateway} {
			l, err := h.LinkByName(link)
			if err != nil {
				return err
			}
			if err := h.AddrDel(l, addr(netip.PrefixFrom(a, 24))); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
				return fmt.Errorf("removing %s: %w", a, err)
			}
		}
		return nil
	})
}
