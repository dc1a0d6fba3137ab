package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Counters returns the key and counter of every element of a set with
// Counter, and nothing else of them. It reads the kernel's dump itself
// rather than through google/nftables, which decodes every attribute of
// every element into objects: for the 40,000 counted elements of 10,000
// farms that was about 100 MiB of garbage per read, and a scrape reads
// them every time.
func (c *Conn) Counters(table string, set Set) ([]Element, error) {
	fail := func(err error) ([]Element, error) {
		return nil, &OpError{Op: "read counters", Object: fmt.Sprintf("set %s of table %s", set.Name, table), Err: err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return fail(ErrClosed)
	}
	nl, err := c.rawLocked()
	if err != nil {
		return fail(err)
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: append([]byte(table), 0)},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: append([]byte(set.Name), 0)},
	})
	if err != nil {
		return fail(err)
	}
	msgs, err := nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		c.dropRawLocked()
		return fail(notExist(err))
	}
	var out []Element
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		if out, err = appendCounters(out, m.Data[4:]); err != nil {
			return fail(err)
		}
	}
	return out, nil
}

// appendCounters decodes one NEWSETELEM message's elements. It walks
// the attributes by hand: a decoder per nested attribute cost more than
// the kernel's dump.
func appendCounters(out []Element, data []byte) ([]Element, error) {
	err := walkAttrs(data, func(typ uint16, list []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return walkAttrs(list, func(_ uint16, elem []byte) error {
			var e Element
			err := walkAttrs(elem, func(typ uint16, v []byte) error {
				switch typ {
				case unix.NFTA_SET_ELEM_KEY:
					return walkAttrs(v, func(typ uint16, key []byte) error {
						if typ == unix.NFTA_DATA_VALUE {
							e.Key = key
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_EXPR:
					return walkAttrs(v, func(typ uint16, x []byte) error {
						if typ != unix.NFTA_EXPR_DATA {
							return nil
						}
						return walkAttrs(x, func(typ uint16, n []byte) error {
							if len(n) != 8 {
								return nil
							}
							switch typ {
							case unix.NFTA_COUNTER_PACKETS:
								e.Packets = binary.BigEndian.Uint64(n)
							case unix.NFTA_COUNTER_BYTES:
								e.Bytes = binary.BigEndian.Uint64(n)
							}
							return nil
						})
					})
				}
				return nil
			})
			if err == nil && e.Key != nil {
				out = append(out, e)
			}
			return err
		})
	})
	return out, err
}

// walkAttrs calls fn with each netlink attribute's type (flags cleared)
// and value in b.
func walkAttrs(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < 4 || n > len(b) {
			return fmt.Errorf("malformed netlink attribute of length %d in %d bytes", n, len(b))
		}
		if err := fn(typ, b[4:n]); err != nil {
			return err
		}
		n = (n + 3) &^ 3
		if n >= len(b) {
			return nil
		}
		b = b[n:]
	}
	return nil
}
