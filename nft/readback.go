package nft

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableExists reports whether the inet table exists.
func (c *Conn) TableExists(table string) (bool, error) {
	var found bool
	err := c.use(func(n *nftables.Conn) error {
		tables, err := n.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, t := range tables {
			if t.Name == table {
				found = true
			}
		}
		return nil
	})
	if err != nil {
		return false, &OpError{Op: "list tables", Object: c.desc, Err: err}
	}
	return found, nil
}

// Chains returns the names of the chains of the inet table.
func (c *Conn) Chains(table string) ([]string, error) {
	var names []string
	err := c.use(func(n *nftables.Conn) error {
		chains, err := n.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name == table {
				names = append(names, ch.Name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, &OpError{Op: "list chains", Object: "table " + table, Err: err}
	}
	return names, nil
}

// Sets returns the sets and maps of the inet table: names, types and
// the Interval and Concat flags.
func (c *Conn) Sets(table string) ([]Set, error) {
	var out []Set
	err := c.use(func(n *nftables.Conn) error {
		sets, err := n.GetSets(&nftables.Table{Name: table, Family: nftables.TableFamilyINet})
		if err != nil {
			return err
		}
		for _, s := range sets {
			// Counter is not read back by google/nftables v0.3.0.
			out = append(out, Set{Name: s.Name, Key: s.KeyType, Data: s.DataType,
				Interval: s.Interval, Concat: s.Concatenation})
		}
		return nil
	})
	if err != nil {
		return nil, &OpError{Op: "list sets", Object: "table " + table, Err: notExist(err)}
	}
	return out, nil
}

// Elements returns the elements of a set with their comments, values and
// counters. Reading is O(elements): do not call it on
// every small change.
func (c *Conn) Elements(table string, set Set) ([]Element, error) {
	var out []Element
	err := c.use(func(n *nftables.Conn) error {
		s := &nftables.Set{Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}, Name: set.Name}
		elems, err := n.GetSetElements(s)
		if err != nil {
			return err
		}
		out = make([]Element, 0, len(elems))
		for _, e := range elems {
			el := Element{Key: e.Key, KeyEnd: e.KeyEnd, Value: e.Val, Comment: e.Comment, IntervalEnd: e.IntervalEnd}
			if set.Data.Name == nftables.TypeVerdict.Name && len(e.Val) > 0 {
				// google/nftables hands a verdict back as its attributes.
				el.Value, el.Jump = nil, verdictChain(e.Val)
			}
			if e.Counter != nil {
				el.Packets, el.Bytes = e.Counter.Packets, e.Counter.Bytes
			}
			out = append(out, el)
		}
		return nil
	})
	if err != nil {
		return nil, &OpError{Op: "list elements", Object: fmt.Sprintf("set %s of table %s", set.Name, table), Err: notExist(err)}
	}
	return out, nil
}

// RuleInfo is what reads back reliably of a rule: its handle and comment.
type RuleInfo struct {
	Handle  uint64
	Comment string
}

// Rules returns the rules of a chain in order.
func (c *Conn) Rules(table, chain string) ([]RuleInfo, error) {
	var out []RuleInfo
	err := c.use(func(n *nftables.Conn) error {
		t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
		rules, err := n.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return err
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out = append(out, RuleInfo{Handle: r.Handle, Comment: comment})
		}
		return nil
	})
	if err != nil {
		return nil, &OpError{Op: "list rules", Object: fmt.Sprintf("chain %s of table %s", chain, table), Err: notExist(err)}
	}
	return out, nil
}

func notExist(err error) error {
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%w: %w", ErrNotExist, err)
	}
	return err
}

// verdictChain returns the chain of a jump or goto verdict, given as its
// netlink attributes; "" for any other verdict.
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(ad.String(), "\x00")
		}
	}
	return ""
}
