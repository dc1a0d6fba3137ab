package lb

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"
	"strings"
)

// Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
// Network Load Balancer", NSDI 2016) maps a connection's hash to a backend
// through a table of m slots, m prime. Every backend has its own
// permutation of the slots, and the backends take turns claiming the next
// slot of their permutation that is still free until the table is full.
// Because a backend's permutation depends on nothing but its name, adding
// or removing one backend leaves most slots where they were: the removed
// backend's slots go to others, or the added one takes its share, and only
// a small fraction of the rest change hands. That fraction shrinks as m
// grows relative to the number of backends: with 100 slots per backend it
// is 2-4% of the table, with 1000 under 1% (see TestMaglevDisruption).
// All this holds only while m stays the same: a connection's slot is its
// hash mod m, so a table of another size sends nearly every connection to
// another backend.

// maglevBackend is one entry of a Maglev table: a backend's name, which
// alone seeds its permutation, and its weight, which sets its share of the
// slots.
type maglevBackend struct {
	name   string
	weight int
}

// maglevEntry is a backend while a table is built.
type maglevEntry struct {
	index  int    // into the caller's slice
	rank   int    // position in name order, which breaks ties
	weight uint64 // > 0
	quota  int    // slots it is to get
	count  int    // slots it has
	slot   int    // next slot of its permutation to try
	skip   int    // distance between consecutive slots of its permutation
}

// maglevTable fills a table of m slots with indexes into backends and
// returns it: slot i goes to backends[table[i]]. m must be prime, or the
// permutations would not visit every slot; maglevTable panics if it is
// not. Backends with weight <= 0 get no slot; if no backend has a positive
// weight, maglevTable returns nil.
//
// The table depends on the set of names and weights, not on their order in
// backends: they are processed in name order, and each permutation is
// derived from the name alone, with hashes that are the same in every
// process. So every node given the same configuration builds the same
// table, and a connection synced from another node finds the same backend.
// Names should be unique; backends with the same name share a permutation.
//
// Weights are honored in two steps. First each backend's quota, its number
// of slots, is its share of m rounded by largest remainder: floor(m*w/W)
// slots, W being the sum of the weights, plus one more for the backends
// with the largest remainders until the quotas add up to m. So every
// backend gets within one slot of m*w/W, and a backend whose share is less
// than one slot may get none. Second, the turns are interleaved in
// proportion to weight (stride scheduling): a backend's k-th turn comes at
// time k/w, ties going in name order, and a backend leaves once it has its
// quota. With equal weights this is the paper's round robin; with unequal
// ones every backend claims slots at the rate of its weight throughout the
// build. Were the light backends to take their turns last, their slots
// would be whatever the others left, set by the others' permutations more
// than by their own, and any change of the others would move them.
func maglevTable(backends []maglevBackend, m int) []int {
	if !isPrime(m) {
		panic(fmt.Sprintf("lb: maglev table size %d is not prime", m))
	}
	var es []maglevEntry
	for i, b := range backends {
		if b.weight > 0 {
			es = append(es, maglevEntry{index: i, weight: uint64(b.weight)})
		}
	}
	if len(es) == 0 {
		return nil
	}
	slices.SortStableFunc(es, func(a, b maglevEntry) int {
		return cmp.Or(strings.Compare(backends[a.index].name, backends[b.index].name), cmp.Compare(a.weight, b.weight))
	})

	var total uint64
	for i := range es {
		e := &es[i]
		e.rank = i
		name := backends[e.index].name
		e.slot = int(maglevHash("maglev offset", name) % uint64(m))
		e.skip = 1
		if m > 2 {
			e.skip = int(maglevHash("maglev skip", name)%uint64(m-1)) + 1
		}
		if total+e.weight < total {
			panic("lb: maglev weights overflow")
		}
		total += e.weight
	}

	// Quotas by largest remainder. m*w is computed in 128 bits, so any
	// weights that add up within 64 bits will do.
	rem := make([]uint64, len(es))
	left := m
	for i := range es {
		hi, lo := bits.Mul64(uint64(m), es[i].weight)
		q, r := bits.Div64(hi, lo, total)
		es[i].quota = int(q)
		rem[i] = r
		left -= int(q)
	}
	byRem := make([]int, len(es))
	for i := range byRem {
		byRem[i] = i
	}
	slices.SortStableFunc(byRem, func(a, b int) int { return cmp.Compare(rem[b], rem[a]) })
	for _, i := range byRem[:left] {
		es[i].quota++
	}

	// The turns: a min-heap on (count/weight, rank). Entries in rank order
	// with count 0 already form one.
	h := make([]*maglevEntry, 0, len(es))
	for i := range es {
		if es[i].quota > 0 {
			h = append(h, &es[i])
		}
	}
	// The search for a free slot, where the time goes, reads a bitmap of
	// the taken slots: an eighth of a megabyte for a million slots, which
	// stays in cache where the table would not.
	table := make([]int, m)
	taken := make([]uint64, (m+63)/64)
	for len(h) > 0 {
		e := h[0]
		for taken[e.slot/64]&(1<<(e.slot%64)) != 0 {
			e.slot += e.skip
			if e.slot >= m {
				e.slot -= m
			}
		}
		taken[e.slot/64] |= 1 << (e.slot % 64)
		table[e.slot] = e.index
		e.count++
		if e.count == e.quota {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		maglevDown(h)
	}
	return table
}

// maglevBefore reports whether a's next turn comes before b's: a.count /
// a.weight < b.count / b.weight, compared as 128-bit products, or the same
// time and a first in name order.
func maglevBefore(a, b *maglevEntry) bool {
	ah, al := bits.Mul64(uint64(a.count), b.weight)
	bh, bl := bits.Mul64(uint64(b.count), a.weight)
	if ah != bh {
		return ah < bh
	}
	if al != bl {
		return al < bl
	}
	return a.rank < b.rank
}

// maglevDown restores the heap order of h after its root moved later.
func maglevDown(h []*maglevEntry) {
	i := 0
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && maglevBefore(h[c+1], h[c]) {
			c++
		}
		if !maglevBefore(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// maglevHash hashes salt and name with FNV-1a 64, which unlike
// hash/maphash is the same in every process, and finishes with
// MurmurHash3's 64-bit mixer: FNV-1a's last step is a multiplication, so
// names that differ only in their last byte, as backend names often do
// (app1, app2), would otherwise get related offsets and skips, and so
// overlapping permutations.
func maglevHash(salt, name string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(salt))
	f.Write([]byte{0})
	f.Write([]byte(name))
	h := f.Sum64()
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// maglevSize returns the table size for a farm of n backends: the
// smallest prime of at least configured (the farm's Slots), or by default
// of at least 100 slots per backend for n rounded up to a power of two.
// The paper's tables have at least 100 slots per backend: fewer make the
// backends' shares uneven (each gets within one slot of its share) and
// make a change of backends move more of the other slots. A change of
// size moves nearly every connection, so the default changes only when n
// crosses a power of two, not with every backend added or removed.
func maglevSize(n, configured int) int {
	if configured > 0 {
		return nextPrime(configured)
	}
	return nextPrime(100 << bits.Len(uint(max(n, 1)-1)))
}

// nextPrime returns the smallest prime >= n.
func nextPrime(n int) int {
	if n <= 2 {
		return 2
	}
	for !isPrime(n) {
		n++
	}
	return n
}

// isPrime reports whether n is prime, by trial division: table sizes are at
// most a few million, whose primality takes a thousand divisions.
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 || n%3 == 0 {
		return n <= 3
	}
	for d := 5; d <= n/d; d += 6 {
		if n%d == 0 || n%(d+2) == 0 {
			return false
		}
	}
	return true
}
