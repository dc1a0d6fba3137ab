package lb

import (
	"context"
	"fmt"
	"syscall"

	"github.com/l4nft/l4nft/nft"
)

// fakeKernel is an in-memory nftables that behaves like the kernel where
// the Balancer relies on it: a batch applies whole or not at all, adding
// an element that exists fails with EEXIST, deleting one that does not
// with ENOENT, and every commit bumps the generation.
type fakeKernel struct {
	exists bool
	sets   map[string]nft.Set
	elems  map[string]map[string]nft.Element
	rules  map[string][]nft.RuleInfo // by chain
	gen    uint32
	// commits are the batches the fake took, in order.
	commits []*nft.Batch
	// failNext, if set, is returned by the next Commit; with
	// committedAnyway the batch is applied first, as after ENOBUFS.
	failNext        error
	committedAnyway bool
}

func newFakeKernel() *fakeKernel { return &fakeKernel{} }

type undo func()

func (k *fakeKernel) Commit(ctx context.Context, b *nft.Batch) error {
	if err := b.Err(); err != nil {
		return err
	}
	if b.Empty() {
		return nil
	}
	if k.failNext != nil && !k.committedAnyway {
		err := k.failNext
		k.failNext = nil
		return err
	}
	var undos []undo
	rollback := func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}
	for _, op := range b.Ops() {
		u, err := k.apply(op)
		if err != nil {
			rollback()
			return fmt.Errorf("fake kernel: %v: %w", op.Verb, err)
		}
		undos = append(undos, u)
	}
	k.gen++
	k.commits = append(k.commits, b)
	if k.failNext != nil {
		err := k.failNext
		k.failNext, k.committedAnyway = nil, false
		return err
	}
	return nil
}

func (k *fakeKernel) apply(op nft.Op) (undo, error) {
	switch op.Verb {
	case nft.AddTable:
		if k.exists {
			return func() {}, nil
		}
		k.exists, k.sets, k.elems, k.rules = true, map[string]nft.Set{}, map[string]map[string]nft.Element{}, map[string][]nft.RuleInfo{}
		return func() { k.exists = false }, nil
	case nft.DeleteTable:
		if !k.exists {
			return nil, syscall.ENOENT
		}
		sets, elems, rules := k.sets, k.elems, k.rules
		k.exists, k.sets, k.elems, k.rules = false, nil, nil, nil
		return func() { k.exists, k.sets, k.elems, k.rules = true, sets, elems, rules }, nil
	}
	if !k.exists {
		return nil, syscall.ENOENT
	}
	switch op.Verb {
	case nft.AddChain:
		if _, ok := k.rules[op.Chain.Name]; ok {
			return func() {}, nil
		}
		k.rules[op.Chain.Name] = []nft.RuleInfo{}
		return func() { delete(k.rules, op.Chain.Name) }, nil
	case nft.AddHelper:
		return func() {}, nil
	case nft.DeleteChain:
		rs, ok := k.rules[op.Chain.Name]
		if !ok {
			return nil, syscall.ENOENT
		}
		for _, es := range k.elems {
			for _, e := range es {
				if e.Jump == op.Chain.Name {
					return nil, syscall.EBUSY
				}
			}
		}
		delete(k.rules, op.Chain.Name)
		return func() { k.rules[op.Chain.Name] = rs }, nil
	case nft.AddRule:
		rs, ok := k.rules[op.Chain.Name]
		if !ok {
			return nil, syscall.ENOENT
		}
		k.rules[op.Chain.Name] = append(rs, nft.RuleInfo{Comment: op.Rule.Comment})
		return func() { k.rules[op.Chain.Name] = rs }, nil
	case nft.AddSet:
		if _, ok := k.sets[op.Set.Name]; ok {
			return nil, syscall.EEXIST
		}
		k.sets[op.Set.Name], k.elems[op.Set.Name] = op.Set, map[string]nft.Element{}
		return func() { delete(k.sets, op.Set.Name); delete(k.elems, op.Set.Name) }, nil
	case nft.AddElements, nft.DeleteElements:
		es, ok := k.elems[op.Set.Name]
		if !ok {
			return nil, syscall.ENOENT
		}
		var done []nft.Element
		var u undo = func() {
			for _, e := range done {
				if op.Verb == nft.AddElements {
					delete(es, elementID(e))
				} else {
					es[elementID(e)] = e
				}
			}
		}
		for _, e := range op.Elements {
			id := elementID(e)
			old, have := es[id]
			switch {
			case op.Verb == nft.AddElements && have:
				u()
				return nil, syscall.EEXIST
			case op.Verb == nft.DeleteElements && !have:
				u()
				return nil, syscall.ENOENT
			case op.Verb == nft.AddElements:
				es[id] = e
				done = append(done, e)
			default:
				delete(es, id)
				done = append(done, old)
			}
		}
		return u, nil
	}
	return nil, fmt.Errorf("unknown verb %v", op.Verb)
}

func (k *fakeKernel) TableExists(string) (bool, error) { return k.exists, nil }

func (k *fakeKernel) Sets(string) ([]nft.Set, error) {
	if !k.exists {
		return nil, syscall.ENOENT
	}
	var out []nft.Set
	for _, s := range k.sets {
		out = append(out, s)
	}
	return out, nil
}

func (k *fakeKernel) Elements(_ string, s nft.Set) ([]nft.Element, error) {
	es, ok := k.elems[s.Name]
	if !ok {
		return nil, syscall.ENOENT
	}
	out := make([]nft.Element, 0, len(es))
	for _, e := range es {
		out = append(out, e)
	}
	return out, nil
}

// Counters returns keys and counters only, as the kernel's counter dump
// parser does: no comments, no values.
func (k *fakeKernel) Counters(table string, s nft.Set) ([]nft.Element, error) {
	es, err := k.Elements(table, s)
	for i, e := range es {
		es[i] = nft.Element{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd, Packets: e.Packets, Bytes: e.Bytes}
	}
	return es, err
}

func (k *fakeKernel) Chains(string) ([]string, error) {
	var out []string
	for name := range k.rules {
		out = append(out, name)
	}
	return out, nil
}

func (k *fakeKernel) Rules(_, chain string) ([]nft.RuleInfo, error) {
	rs, ok := k.rules[chain]
	if !ok {
		return nil, syscall.ENOENT
	}
	return rs, nil
}

func (k *fakeKernel) Generation() (uint32, error) { return k.gen, nil }
func (k *fakeKernel) Identity() (string, error)   { return fmt.Sprintf("fake %p", k), nil }
func (k *fakeKernel) Close() error                { return nil }

// count adds n packets to the counter of the element with key in set.
func (k *fakeKernel) count(set nft.Set, key []byte, n uint64) {
	for id, e := range k.elems[set.Name] {
		if string(e.Key) == string(key) {
			e.Packets += n
			k.elems[set.Name][id] = e
		}
	}
}

// openFake opens a Balancer on k; flushed collects the marks it cuts.
func openFake(t interface {
	Helper()
	Fatal(...any)
}, k *fakeKernel, o Options, flushed *[]uint32) *Balancer {
	t.Helper()
	flush := func(_ uint32, ms []uint32) error {
		if flushed != nil {
			*flushed = append(*flushed, ms...)
		}
		return nil
	}
	b, err := open(context.Background(), o.withDefaults(), k, k, flush)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
