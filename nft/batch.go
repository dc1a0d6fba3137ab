package nft

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Chunk limits for element lists. One list must stay below the 64 KiB
// netlink attribute limit, above which the kernel silently truncates it
// (the 16-bit length wraps and Flush still returns nil).
const (
	maxChunkElements = 1000
	maxChunkBytes    = 32 << 10
)

// Batch queues changes to one table. Methods record the first error and
// ignore every call after it; Conn.Commit reports that error and sends
// nothing. The zero Batch is not usable: call NewBatch.
type Batch struct {
	table    *nftables.Table
	ops      []func(*nftables.Conn) error
	sets     map[string]*nftables.Set
	messages int
	elements int
	err      error
}

// NewBatch starts a batch for the inet table named table.
func NewBatch(table string) *Batch {
	return &Batch{
		table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
		sets:  make(map[string]*nftables.Set),
	}
}

// Err returns the first error recorded while queueing.
func (b *Batch) Err() error { return b.err }

// Empty reports whether the batch would send nothing.
func (b *Batch) Empty() bool { return len(b.ops) == 0 }

// Messages returns the number of netlink messages queued.
func (b *Batch) Messages() int { return b.messages }

// Elements returns the number of set elements added or deleted.
func (b *Batch) Elements() int { return b.elements }

func (b *Batch) add(messages int, op func(*nftables.Conn) error) {
	if b.err != nil {
		return
	}
	b.messages += messages
	b.ops = append(b.ops, op)
}

func (b *Batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// AddTable creates the table; it is no error if it exists already.
func (b *Batch) AddTable() {
	b.add(1, func(c *nftables.Conn) error { c.AddTable(b.table); return nil })
}

// DeleteTable deletes the table and everything in it. The table must exist;
// AddTable then DeleteTable in one batch deletes whether or not it existed.
func (b *Batch) DeleteTable() {
	b.add(1, func(c *nftables.Conn) error { c.DelTable(b.table); return nil })
}

// Hook attaches a chain to a netfilter hook.
type Hook struct {
	// Type is the chain type: nftables.ChainTypeFilter or ChainTypeNAT.
	Type nftables.ChainType
	// Hook is the netfilter hook, such as nftables.ChainHookPrerouting.
	Hook *nftables.ChainHook
	// Priority orders the chain among others on the same hook.
	Priority nftables.ChainPriority
}

// Chain is a chain of the table. A chain with a Hook is a base chain, with
// policy accept; one without is a regular chain reached by jump or goto.
type Chain struct {
	Name string
	Hook *Hook
}

func (b *Batch) nftChain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: b.table}
}

// AddChain creates a chain.
func (b *Batch) AddChain(ch Chain) {
	c := b.nftChain(ch.Name)
	if h := ch.Hook; h != nil {
		accept := nftables.ChainPolicyAccept
		prio := h.Priority
		c.Type, c.Hooknum, c.Priority, c.Policy = h.Type, h.Hook, &prio, &accept
	}
	b.add(1, func(n *nftables.Conn) error { n.AddChain(c); return nil })
}

// FlushChain deletes every rule of a chain.
func (b *Batch) FlushChain(name string) {
	c := b.nftChain(name)
	b.add(1, func(n *nftables.Conn) error { n.FlushChain(c); return nil })
}

// DeleteChain deletes an empty, unreferenced chain.
func (b *Batch) DeleteChain(name string) {
	c := b.nftChain(name)
	b.add(1, func(n *nftables.Conn) error { n.DelChain(c); return nil })
}

// Rule is one rule: its expressions and the comment that identifies it.
type Rule struct {
	Exprs   []expr.Any
	Comment string
}

// AddRule appends a rule to a chain.
func (b *Batch) AddRule(chain string, r Rule) {
	if len(r.Exprs) == 0 {
		b.fail(fmt.Errorf("rule %q in chain %q has no expressions", r.Comment, chain))
		return
	}
	rule := &nftables.Rule{Table: b.table, Chain: b.nftChain(chain), Exprs: r.Exprs}
	if r.Comment != "" {
		rule.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
	}
	b.add(1, func(n *nftables.Conn) error { n.AddRule(rule); return nil })
}

// Set describes a named set or map.
type Set struct {
	Name string
	// Key is the key type; use nftables.ConcatSetType for concatenations.
	Key nftables.SetDatatype
	// Data is the value type of a map; zero for a plain set.
	Data nftables.SetDatatype
	// Interval lets elements be ranges (KeyEnd in Element).
	Interval bool
	// Concat marks Key as a concatenation. With Interval it selects the
	// kernel's pipapo set type, which matches ranges per field; without
	// Concat an Interval set is an rbtree, which compares whole keys
	// byte by byte.
	Concat bool
	// Counter gives every element a packet and byte counter that any
	// lookup matching the element updates.
	Counter bool
}

func (s Set) isMap() bool { return s.Data.Name != "" }

// AddSet creates a set. It is an error if it exists already.
func (b *Batch) AddSet(s Set) {
	if _, dup := b.sets[s.Name]; dup {
		b.fail(fmt.Errorf("set %q added twice", s.Name))
		return
	}
	ns := &nftables.Set{
		Table:         b.table,
		Name:          s.Name,
		KeyType:       s.Key,
		DataType:      s.Data,
		IsMap:         s.isMap(),
		Interval:      s.Interval,
		Concatenation: s.Concat,
		Counter:       s.Counter,
	}
	b.sets[s.Name] = ns
	b.add(1, func(n *nftables.Conn) error { return n.AddSet(ns, nil) })
}

// Element is one element of a set or map.
type Element struct {
	// Key is the key in the byte layout the kernel compares: big-endian for
	// addresses and ports, host order for marks; concatenated fields are
	// each padded to 4 bytes.
	Key []byte
	// KeyEnd is the last key of a range, for Interval sets with Concat.
	KeyEnd []byte
	// IntervalEnd marks the element that ends a range, for Interval sets
	// without Concat: there a range from a to b is the element a (with the
	// value) and the end element b+1.
	IntervalEnd bool
	// Value is the data of a map element.
	Value []byte
	// Comment is stored with the element and read back unchanged.
	Comment string
	// Packets and Bytes are the element's counter, filled by Conn.Elements
	// for sets with Counter.
	Packets, Bytes uint64
}

func (e Element) size() int {
	return 64 + len(e.Key) + len(e.KeyEnd) + len(e.Value) + len(e.Comment)
}

func (e Element) nft() nftables.SetElement {
	return nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, Val: e.Value, Comment: e.Comment, IntervalEnd: e.IntervalEnd}
}

// ref returns the set for an element operation: the one added in this
// batch, or a reference by name to one that exists in the kernel.
func (b *Batch) ref(s Set) *nftables.Set {
	if ns, ok := b.sets[s.Name]; ok {
		return ns
	}
	ns := &nftables.Set{
		Table: b.table, Name: s.Name, KeyType: s.Key, DataType: s.Data,
		IsMap: s.isMap(), Interval: s.Interval, Concatenation: s.Concat,
	}
	b.sets[s.Name] = ns
	return ns
}

// AddElements adds elements to a set, in chunks the kernel accepts whole.
// Adding an element whose key exists fails the batch (EEXIST): delete it in
// the same batch first to change its value.
func (b *Batch) AddElements(s Set, elems []Element) {
	b.elements += len(elems)
	ns := b.ref(s)
	for _, chunk := range chunks(elems) {
		b.add(1, func(n *nftables.Conn) error { return n.SetAddElements(ns, chunk) })
	}
}

// DeleteElements deletes elements from a set, in chunks. Deleting an
// element that is not there fails the batch (ENOENT).
func (b *Batch) DeleteElements(s Set, elems []Element) {
	b.elements += len(elems)
	ns := b.ref(s)
	keys := make([]Element, len(elems))
	for i, e := range elems {
		keys[i] = Element{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd} // the kernel deletes by key
	}
	for _, chunk := range chunks(keys) {
		b.add(1, func(n *nftables.Conn) error { return n.SetDeleteElements(ns, chunk) })
	}
}

// chunks converts elements and cuts them into lists that each fit one
// netlink attribute with room to spare.
func chunks(elems []Element) [][]nftables.SetElement {
	var out [][]nftables.SetElement
	var cur []nftables.SetElement
	size := 0
	for _, e := range elems {
		if len(cur) == maxChunkElements || size+e.size() > maxChunkBytes {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, e.nft())
		size += e.size()
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
