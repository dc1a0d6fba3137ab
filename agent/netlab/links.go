package netlab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// withNetlink runs fn with a route netlink handle opened inside n.
func (n *Namespace) withNetlink(fn func(h *netlink.Handle) error) error {
	n.mu.RLock()
	if n.handle < 0 {
		n.mu.RUnlock()
		return fmt.Errorf("%s: %w", n.name, ErrClosed)
	}
	h, err := netlink.NewHandleAt(n.handle, netlinkRoute)
	n.mu.RUnlock()
	if err != nil {
		return fmt.Errorf("%s: opening netlink socket in namespace: %w", n.name, err)
	}
	defer h.Close()
	return fn(h)
}

func (n *Namespace) setLinkUp(name string) error {
	return n.withNetlink(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s: finding link %s: %w", n.name, name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("%s: setting link %s up: %w", n.name, name, err)
		}
		return nil
	})
}

// netlinkAddr converts a prefix to a netlink address; IPv6 addresses skip
// duplicate address detection.
func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = ifaFlagNoDAD
	}
	return a
}

func addAddrs(h *netlink.Handle, link netlink.Link, prefixes ...netip.Prefix) error {
	for _, p := range prefixes {
		if err := h.AddrAdd(link, netlinkAddr(p)); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, link.Attrs().Name, err)
		}
	}
	return nil
}

func addDefaultRoutes(h *netlink.Handle, link netlink.Link, gateways ...netip.Addr) error {
	for _, gw := range gateways {
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: netip.IPv6Unspecified().AsSlice(), Mask: net.CIDRMask(0, 128)},
			Gw:        gw.AsSlice(),
		}
		if gw.Is4() {
			r.Dst = &net.IPNet{IP: netip.IPv4Unspecified().AsSlice(), Mask: net.CIDRMask(0, 32)}
		}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("adding default route via %s on %s: %w", gw, link.Attrs().Name, err)
		}
	}
	return nil
}
