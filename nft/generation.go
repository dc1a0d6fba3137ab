package nft

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Generation returns the namespace's nf_tables ruleset generation: a
// counter the kernel increments with every committed transaction, ours or
// anyone's. If it is the one seen right after our last commit, nothing in
// the namespace changed since, and a full read-back can be skipped.
// Asking costs one small netlink round trip.
func (c *Conn) Generation() (uint32, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return 0, ErrClosed
	}
	nl, err := c.rawLocked()
	if err != nil {
		return 0, &OpError{Op: "get generation", Object: c.desc, Err: err}
	}
	id, err := getGeneration(nl)
	if err != nil {
		c.dropRawLocked()
		return 0, &OpError{Op: "get generation", Object: c.desc, Err: err}
	}
	return id, nil
}

// rawLocked returns the Conn's own netlink socket, for what
// google/nftables does not offer (or offers at a cost): generation
// queries and counter dumps.
func (c *Conn) rawLocked() (*netlink.Conn, error) {
	if c.raw == nil {
		nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(c.ns.Fd())})
		if err != nil {
			return nil, err
		}
		_ = nl.SetReadBuffer(socketBuffer)
		c.raw = nl
	}
	return c.raw, nil
}

func (c *Conn) dropRawLocked() {
	if c.raw != nil {
		c.raw.Close()
		c.raw = nil
	}
}

// Identity names the Conn's namespace for as long as the system runs:
// the boot's id and the namespace's device and inode numbers.
func (c *Conn) Identity() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return "", ErrClosed
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(c.ns.Fd()), &st); err != nil {
		return "", &OpError{Op: "identify namespace", Object: c.desc, Err: err}
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", &OpError{Op: "identify namespace", Object: c.desc, Err: err}
	}
	return fmt.Sprintf("boot %s netns %d:%d", strings.TrimSpace(string(boot)), st.Dev, st.Ino), nil
}

func getGeneration(nl *netlink.Conn) (uint32, error) {
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		// struct nfgenmsg: family AF_UNSPEC, version 0, resource id 0.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := nl.Execute(req)
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("no generation id in the kernel's answer")
}
