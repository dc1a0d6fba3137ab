package nft

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Chunk limits for element lists. One list must stay below the 64 KiB
// netlink attribute limit, above which the kernel silently truncates it
// (the 16-bit length wraps and Flush still returns nil).
const (
	maxChunkElements = 1000
	maxChunkBytes    = 32 << 10
)

// Batch queues changes to one table as data: a list of Ops that can be
// inspected, printed and compared before Conn.Commit sends them as one
// transaction. Methods record the first error and ignore every call after
// it; Conn.Commit reports that error and sends nothing. The zero Batch is
// not usable: call NewBatch.
type Batch struct {
	table    string
	ops      []Op
	sets     map[string]bool // added in this batch
	messages int
	elements int
	err      error
}

// Verb is what an Op does.
type Verb uint8

// The verbs of a Batch.
const (
	AddTable Verb = iota + 1
	DeleteTable
	AddChain
	AddRule
	AddSet
	AddElements
	DeleteElements
	DeleteChain
	AddHelper
)

var verbNames = [...]string{AddTable: "add table", DeleteTable: "delete table", AddChain: "add chain",
	AddRule: "add rule", AddSet: "add set", AddElements: "add element", DeleteElements: "delete element", DeleteChain: "delete chain", AddHelper: "add ct helper"}

func (v Verb) String() string {
	if int(v) < len(verbNames) && verbNames[v] != "" {
		return verbNames[v]
	}
	return fmt.Sprintf("verb(%d)", v)
}

// Op is one queued operation. Only the fields its Verb needs are set.
type Op struct {
	Verb Verb
	// Chain is the chain of AddChain, or the chain AddRule appends to.
	Chain Chain
	// Rule is the rule of AddRule.
	Rule Rule
	// Set is the set of AddSet, AddElements and DeleteElements.
	Set Set
	// Elements are the elements added or deleted.
	Elements []Element
	// Helper is the ct helper object of AddHelper.
	Helper HelperObject
}

// HelperObject is a ct helper object: Name in the table, for the kernel's
// helper Helper (such as "ftp") on transport protocol Proto.
type HelperObject struct {
	Name, Helper string
	Proto        uint8
}

// AddHelper creates a ct helper object, or leaves it as it is if it
// exists. The kernel loads the helper's module if it must.
func (b *Batch) AddHelper(h HelperObject) { b.add(1, Op{Verb: AddHelper, Helper: h}) }

// NewBatch starts a batch for the inet table named table.
func NewBatch(table string) *Batch {
	return &Batch{table: table, sets: make(map[string]bool)}
}

// Table returns the name of the batch's table.
func (b *Batch) Table() string { return b.table }

// Ops returns the queued operations, in order. The caller must not change
// them.
func (b *Batch) Ops() []Op { return b.ops }

// Err returns the first error recorded while queueing.
func (b *Batch) Err() error { return b.err }

// Empty reports whether the batch would send nothing.
func (b *Batch) Empty() bool { return len(b.ops) == 0 }

// Messages returns the number of netlink messages queued.
func (b *Batch) Messages() int { return b.messages }

// Elements returns the number of set elements added or deleted.
func (b *Batch) Elements() int { return b.elements }

func (b *Batch) add(messages int, op Op) {
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
func (b *Batch) AddTable() { b.add(1, Op{Verb: AddTable}) }

// DeleteTable deletes the table and everything in it. The table must exist;
// AddTable then DeleteTable in one batch deletes whether or not it existed.
func (b *Batch) DeleteTable() { b.add(1, Op{Verb: DeleteTable}) }

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

// AddChain creates a chain.
func (b *Batch) AddChain(ch Chain) { b.add(1, Op{Verb: AddChain, Chain: ch}) }

// DeleteChain deletes a regular chain and its rules. Nothing may jump to
// it any more (EBUSY otherwise).
func (b *Batch) DeleteChain(name string) { b.add(1, Op{Verb: DeleteChain, Chain: Chain{Name: name}}) }

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
	b.add(1, Op{Verb: AddRule, Chain: Chain{Name: chain}, Rule: r})
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
	// Dynamic lets rules add, update and delete elements (dynset); with
	// Timeouts, elements can expire. Size caps the number of elements:
	// a rule's add fails when the set is full.
	Dynamic, Timeouts bool
	Size              uint32
}

func (s Set) isMap() bool { return s.Data.Name != "" }

// AddSet creates a set. It is an error if it exists already.
func (b *Batch) AddSet(s Set) {
	if b.sets[s.Name] {
		b.fail(fmt.Errorf("set %q added twice", s.Name))
		return
	}
	b.sets[s.Name] = true
	b.add(1, Op{Verb: AddSet, Set: s})
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
	// Jump is the data of a verdict map element: a jump to this chain.
	Jump string
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
	se := nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, Val: e.Value, Comment: e.Comment, IntervalEnd: e.IntervalEnd}
	if e.Jump != "" {
		se.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: e.Jump}
	}
	return se
}

// AddElements adds elements to a set, in chunks the kernel accepts whole.
// Adding an element whose key exists fails the batch (EEXIST): delete it in
// the same batch first to change its value.
func (b *Batch) AddElements(s Set, elems []Element) {
	if len(elems) == 0 {
		return
	}
	b.elements += len(elems)
	b.add(len(chunks(elems)), Op{Verb: AddElements, Set: s, Elements: elems})
}

// DeleteElements deletes elements from a set, in chunks. Deleting an
// element that is not there fails the batch (ENOENT). Only the keys count.
func (b *Batch) DeleteElements(s Set, elems []Element) {
	if len(elems) == 0 {
		return
	}
	keys := make([]Element, len(elems))
	for i, e := range elems {
		keys[i] = Element{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd} // the kernel deletes by key
	}
	b.elements += len(elems)
	b.add(len(chunks(keys)), Op{Verb: DeleteElements, Set: s, Elements: keys})
}

// chunks cuts elements into lists that each fit one netlink attribute
// with room to spare. The lists share elems' backing array.
func chunks(elems []Element) [][]Element {
	var out [][]Element
	first, size := 0, 0
	for i, e := range elems {
		if i-first == maxChunkElements || size+e.size() > maxChunkBytes {
			out = append(out, elems[first:i])
			first, size = i, 0
		}
		size += e.size()
	}
	if first < len(elems) {
		out = append(out, elems[first:])
	}
	return out
}

// queue hands one Op to google/nftables. sets remembers the sets added
// earlier in the same batch, which later element operations must refer to.
func queue(n *nftables.Conn, table *nftables.Table, op Op, sets map[string]*nftables.Set) error {
	switch op.Verb {
	case AddTable:
		n.AddTable(table)
	case DeleteTable:
		n.DelTable(table)
	case AddChain:
		c := &nftables.Chain{Name: op.Chain.Name, Table: table}
		if h := op.Chain.Hook; h != nil {
			accept := nftables.ChainPolicyAccept
			prio := h.Priority
			c.Type, c.Hooknum, c.Priority, c.Policy = h.Type, h.Hook, &prio, &accept
		}
		n.AddChain(c)
	case DeleteChain:
		n.DelChain(&nftables.Chain{Name: op.Chain.Name, Table: table})
	case AddHelper:
		n.AddObj(&nftables.NamedObj{Table: table, Name: op.Helper.Name, Type: nftables.ObjTypeCtHelper,
			Obj: &expr.CtHelper{Name: op.Helper.Helper, L3Proto: unix.NFPROTO_INET, L4Proto: op.Helper.Proto}})
	case AddRule:
		r := &nftables.Rule{Table: table, Chain: &nftables.Chain{Name: op.Chain.Name, Table: table}, Exprs: op.Rule.Exprs}
		if op.Rule.Comment != "" {
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, op.Rule.Comment)
		}
		n.AddRule(r)
	case AddSet:
		s := nftSet(table, op.Set)
		s.Counter = op.Set.Counter
		sets[s.Name] = s
		return n.AddSet(s, nil)
	case AddElements, DeleteElements:
		s := sets[op.Set.Name]
		if s == nil {
			s = nftSet(table, op.Set)
			sets[s.Name] = s
		}
		for _, chunk := range chunks(op.Elements) {
			es := make([]nftables.SetElement, len(chunk))
			for i, e := range chunk {
				es[i] = e.nft()
			}
			var err error
			if op.Verb == AddElements {
				err = n.SetAddElements(s, es)
			} else {
				err = n.SetDeleteElements(s, es)
			}
			if err != nil {
				return fmt.Errorf("%s in set %s: %w", op.Verb, op.Set.Name, err)
			}
		}
	default:
		return fmt.Errorf("unknown operation %v", op.Verb)
	}
	return nil
}

func nftSet(table *nftables.Table, s Set) *nftables.Set {
	return &nftables.Set{
		Table: table, Name: s.Name, KeyType: s.Key, DataType: s.Data,
		IsMap: s.isMap(), Interval: s.Interval, Concatenation: s.Concat,
		Dynamic: s.Dynamic, HasTimeout: s.Timeouts, Size: s.Size,
	}
}
