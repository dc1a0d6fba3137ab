package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watch calls changed whenever another process commits a transaction that
// touches the inet table named table, and when notifications were lost
// (the socket's buffer overflowed), until ctx is done. It blocks; run it
// in a goroutine of its own. Transactions committed by this process are
// not reported: the kernel names the committing thread (its id in the
// initial pid namespace, and its command name) in each transaction's
// generation message. In the initial pid namespace a thread of ours is
// ours; in a container, where those ids cannot be mapped, a transaction
// committed under this process's command name counts as ours.
//
// It listens to the namespace's nf_tables notifications (the
// NFNLGRP_NFTABLES group), which the kernel sends for every object and
// element a transaction changes, anyone's: on a busy host that is a
// steady stream to read, and reading is all Watch does with most of it.
//
// ready, if not nil, is called once Watch listens: changes committed before
// are not reported.
func (c *Conn) Watch(ctx context.Context, table string, ready, changed func()) error {
	c.mu.Lock()
	if c.ns == nil {
		c.mu.Unlock()
		return ErrClosed
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(c.ns.Fd())})
	c.mu.Unlock()
	if err != nil {
		return &OpError{Op: "watch", Object: "table " + table, Err: err}
	}
	defer nl.Close()
	if err := nl.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return &OpError{Op: "watch", Object: "table " + table, Err: err}
	}
	_ = nl.SetReadBuffer(socketBuffer)
	if ready != nil {
		ready()
	}
	stop := context.AfterFunc(ctx, func() { nl.Close() })
	defer stop()

	self := newSelf()
	touched := false
	for {
		msgs, err := nl.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, syscall.ENOBUFS) {
			touched = false
			changed() // notifications were lost: anything may have changed
			continue
		}
		if err != nil {
			return &OpError{Op: "watch", Object: "table " + table, Err: err}
		}
		for _, m := range msgs {
			if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES {
				continue
			}
			switch typ := int(m.Header.Type & 0xff); typ {
			case unix.NFT_MSG_NEWGEN:
				if touched && !self.committed(m.Data) {
					changed()
				}
				touched = false
			case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN,
				unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE, unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET,
				unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
				if !touched && aboutTable(m.Data, table) {
					touched = true
				}
			}
		}
	}
}

// aboutTable reports whether a notification (struct nfgenmsg, then
// attributes) concerns the inet table named table. Every object's first
// attribute, type 1, is its table's name (NFTA_TABLE_NAME for a table).
func aboutTable(data []byte, table string) bool {
	if len(data) < 4 || data[0] != unix.NFPROTO_INET {
		return false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return false
	}
	for ad.Next() {
		if ad.Type() == 1 {
			return ad.String() == table
		}
	}
	return false
}

// self recognises this process's transactions.
type self struct {
	comm   string
	nested bool // in a pid namespace other than the initial one
}

func newSelf() self {
	comm, _ := os.ReadFile("/proc/self/comm")
	status, _ := os.ReadFile("/proc/self/status")
	nested := false
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "NSpid:" {
			nested = len(f) > 2
		}
	}
	return self{comm: strings.TrimSpace(string(comm)), nested: nested}
}

// committed reports whether a NEWGEN message names one of our threads.
func (s self) committed(data []byte) bool {
	if len(data) < 4 {
		return false
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return false
	}
	ad.ByteOrder = binary.BigEndian
	var tid int
	var comm string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_PROC_PID:
			tid = int(ad.Uint32())
		case unix.NFTA_GEN_PROC_NAME:
			comm = ad.String()
		}
	}
	if s.nested {
		return comm != "" && comm == s.comm
	}
	if tid <= 0 {
		return false
	}
	_, err = os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}
