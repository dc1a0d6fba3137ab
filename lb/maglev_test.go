package lb

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// maglevBackends returns backends named backend-0, backend-1, ... with the
// given weights.
func maglevBackends(weights ...int) []maglevBackend {
	bs := make([]maglevBackend, len(weights))
	for i, w := range weights {
		bs[i] = maglevBackend{fmt.Sprintf("backend-%d", i), w}
	}
	return bs
}

// maglevEqualWeights returns n weights of 1.
func maglevEqualWeights(n int) []int {
	ws := make([]int, n)
	for i := range ws {
		ws[i] = 1
	}
	return ws
}

// maglevNames returns the backend name in each slot of table.
func maglevNames(table []int, backends []maglevBackend) []string {
	names := make([]string, len(table))
	for i, b := range table {
		names[i] = backends[b].name
	}
	return names
}

// maglevCounts returns the number of slots of each backend, by index.
func maglevCounts(t *testing.T, table []int, backends []maglevBackend) []int {
	t.Helper()
	counts := make([]int, len(backends))
	for i, b := range table {
		if b < 0 || b >= len(backends) {
			t.Fatalf("slot %d holds %d, not an index into %d backends", i, b, len(backends))
		}
		counts[b]++
	}
	return counts
}

// maglevMoved returns the number of slots whose backend's name differs
// between tables a and b.
func maglevMoved(a, b []string) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// TestMaglevTableShares checks that every slot goes to a backend with a
// positive weight and that each backend gets within one slot of its share
// m*w/W.
func TestMaglevTableShares(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
		m       int
	}{
		{"1:1:1", []int{1, 1, 1}, 0},
		{"1:2:3", []int{1, 2, 3}, 0},
		{"10:1", []int{10, 1}, 0},
		{"100 equal", maglevEqualWeights(100), 0},
		{"1:2:3 in 65537", []int{1, 2, 3}, 65537},
		{"uneven", []int{7, 1, 10000, 3, 3, 250}, 0},
		{"maximal weights", []int{MaxWeight, MaxWeight - 1, 1}, 0},
		{"zero and negative ignored", []int{0, 5, -1, 5, 2}, 0},
		{"one", []int{4}, 0},
		{"smaller than one slot", []int{1, 100000}, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs := maglevBackends(tc.weights...)
			m := tc.m
			if m == 0 {
				m = maglevSize(len(bs), 0)
			}
			table := maglevTable(bs, m)
			if len(table) != m {
				t.Fatalf("table has %d slots, want %d", len(table), m)
			}
			counts := maglevCounts(t, table, bs)
			total := 0
			for _, w := range tc.weights {
				total += max(w, 0)
			}
			for i, w := range tc.weights {
				want := float64(m) * float64(max(w, 0)) / float64(total)
				if math.Abs(float64(counts[i])-want) >= 1 {
					t.Errorf("backend %d (weight %d) has %d slots, want %.2f ± 1", i, w, counts[i], want)
				}
				if w <= 0 && counts[i] != 0 {
					t.Errorf("backend %d (weight %d) has %d slots, want none", i, w, counts[i])
				}
			}
		})
	}
}

// TestMaglevTableEmpty checks that a table with no backend of positive
// weight is nil, so that a caller cannot send connections to index 0.
func TestMaglevTableEmpty(t *testing.T) {
	for _, bs := range [][]maglevBackend{nil, maglevBackends(0, -3)} {
		if table := maglevTable(bs, 307); table != nil {
			t.Errorf("maglevTable(%v) = %d slots, want nil", bs, len(table))
		}
	}
}

// TestMaglevTableNotPrime checks that a size whose permutations would not
// cover the table panics rather than loops.
func TestMaglevTableNotPrime(t *testing.T) {
	for _, m := range []int{-1, 0, 1, 4, 100, 1001} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("maglevTable(_, %d) did not panic", m)
				}
			}()
			maglevTable(maglevBackends(1, 1), m)
		}()
	}
}

// TestMaglevTableOrder checks that the order of the backends does not
// change which name is in each slot, only the indexes, so nodes that list
// the same backends in different orders agree.
func TestMaglevTableOrder(t *testing.T) {
	for _, weights := range [][]int{maglevEqualWeights(10), {1, 2, 3, 4, 5, 0, 6}, maglevEqualWeights(100)} {
		bs := maglevBackends(weights...)
		m := maglevSize(len(bs), 0)
		want := maglevNames(maglevTable(bs, m), bs)
		r := rand.New(rand.NewPCG(1, 2))
		for range 10 {
			shuffled := slices.Clone(bs)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			got := maglevNames(maglevTable(shuffled, m), shuffled)
			if n := maglevMoved(want, got); n != 0 {
				t.Fatalf("order %v: %d of %d slots differ", shuffled, n, m)
			}
		}
	}
}

// TestMaglevTableGolden pins the table of a fixed configuration. Nodes
// running different versions must build the same table for connections to
// keep their backend when a node takes over: a change of the hashes or the
// order of the turns fails here.
func TestMaglevTableGolden(t *testing.T) {
	bs := []maglevBackend{{"app1", 1}, {"app2", 1}, {"app3", 2}}
	if got, want := maglevTable(bs, 13), []int{1, 0, 2, 0, 2, 2, 1, 1, 2, 2, 2, 2, 0}; !slices.Equal(got, want) {
		t.Errorf("maglevTable(%v, 13) = %v, want %v", bs, got, want)
	}
	bs = maglevBackends(3, 1, 4, 1, 5, 9, 2, 6)
	h := fnv.New64a()
	h.Write([]byte(strings.Join(maglevNames(maglevTable(bs, 65537), bs), ",")))
	if got, want := h.Sum64(), uint64(0xbcf3257b660fee10); got != want {
		t.Errorf("hash of maglevTable(%v, 65537) = %#x, want %#x", bs, got, want)
	}
}

// TestMaglevDisruption checks Maglev's promise: removing one of N equal
// backends moves its own slots and few of the others, and adding one moves
// the slots it takes and few of the others. How few depends on the slots
// per backend. The paper's minimum of 100 (maglevSize's default) keeps
// the others' moves under 5% of the table; 1000 keep them under 1%. The
// table size stays the same throughout: a table of another size sends
// nearly every connection elsewhere.
func TestMaglevDisruption(t *testing.T) {
	for _, tc := range []struct {
		n, perBackend int
		limit         float64 // largest fraction of the table moved between other backends
	}{
		{5, 0, 0.05}, {10, 0, 0.05}, {50, 0, 0.05},
		{5, 1000, 0.01}, {10, 1000, 0.01}, {50, 1000, 0.01},
	} {
		t.Run(fmt.Sprintf("N=%d/per=%d", tc.n, tc.perBackend), func(t *testing.T) {
			n := tc.n
			bs := maglevBackends(maglevEqualWeights(n)...)
			m := maglevSize(n, tc.perBackend*n)
			before := maglevNames(maglevTable(bs, m), bs)
			limit := tc.limit * float64(m)

			worst, sum := 0, 0
			for r := range bs {
				less := slices.Delete(slices.Clone(bs), r, r+1)
				after := maglevNames(maglevTable(less, m), less)
				own := 0
				for _, name := range before {
					if name == bs[r].name {
						own++
					}
				}
				others := maglevMoved(before, after) - own
				worst = max(worst, others)
				sum += others
				if float64(others) > limit {
					t.Errorf("removing %s moved its %d slots and %d of the other %d (limit %.0f)", bs[r].name, own, others, m-own, limit)
				}
			}
			t.Logf("N=%d m=%d: removing one backend moves its own ~%.0f slots and %.2f%% of the table between the others (mean over each backend removed; worst %d slots, %.2f%%)",
				n, m, float64(m)/float64(n), 100*float64(sum)/float64(n*m), worst, 100*float64(worst)/float64(m))

			more := maglevBackends(maglevEqualWeights(n + 1)...)
			after := maglevNames(maglevTable(more, m), more)
			own := 0
			for _, name := range after {
				if name == more[n].name {
					own++
				}
			}
			moved := maglevMoved(before, after)
			others := moved - own
			if float64(others) > limit {
				t.Errorf("adding %s moved %d of %d slots: %d to it and %d between the others (limit %.0f)", more[n].name, moved, m, own, others, limit)
			}
			t.Logf("N=%d m=%d: adding one backend moves %d slots (%.2f%%): %d to it and %d (%.2f%%) between the others",
				n, m, moved, 100*float64(moved)/float64(m), own, others, 100*float64(others)/float64(m))
		})
	}
}

// TestMaglevWeightedChiSquare checks that the slot counts fit the weights:
// Pearson's chi-square statistic stays below its critical value at
// p = 0.001, as it would for a fair random split. Shares rounded to within
// one slot give a statistic far below it.
func TestMaglevWeightedChiSquare(t *testing.T) {
	// chiSquare999 is the chi-square distribution's 0.999 quantile by
	// degrees of freedom.
	chiSquare999 := map[int]float64{1: 10.828, 2: 13.816, 4: 18.467, 7: 24.322, 99: 148.230}
	for _, tc := range []struct {
		name    string
		weights []int
	}{
		{"1:2:3", []int{1, 2, 3}},
		{"10:1", []int{10, 1}},
		{"1:1:1:1:100", []int{1, 1, 1, 1, 100}},
		{"powers of 2", []int{5, 10, 20, 40, 80, 160, 320, 640}},
		{"100 equal", maglevEqualWeights(100)},
	} {
		weights := tc.weights
		bs := maglevBackends(weights...)
		m := maglevSize(len(bs), 0)
		counts := maglevCounts(t, maglevTable(bs, m), bs)
		total := 0
		for _, w := range weights {
			total += w
		}
		chi2 := 0.0
		for i, w := range weights {
			want := float64(m) * float64(w) / float64(total)
			chi2 += (float64(counts[i]) - want) * (float64(counts[i]) - want) / want
		}
		critical := chiSquare999[len(weights)-1]
		if chi2 > critical {
			t.Errorf("%s: chi-square %.3f over %d slots exceeds %.2f (counts %v)", tc.name, chi2, m, critical, counts)
		}
		t.Logf("%s: chi-square %.4f over %d slots, critical %.2f", tc.name, chi2, m, critical)
	}
}

func TestNextPrime(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{-5, 2}, {0, 2}, {1, 2}, {2, 2}, {3, 3}, {4, 5}, {24, 29}, {25, 29},
		{97, 97}, {98, 101}, {300, 307}, {1000, 1009}, {65536, 65537},
		{1000000, 1000003}, {1 << 31, 1<<31 + 11},
	} {
		if got := nextPrime(tc.n); got != tc.want {
			t.Errorf("nextPrime(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestMaglevSize(t *testing.T) {
	for _, tc := range []struct{ n, configured, want int }{
		{1, 0, 101},
		{3, 0, 401},
		{3, 1000, 1009},
		{8, 0, 809},
		{9, 0, 1601},
		{10, 0, 1601},
		{10, 500, 503},
		{100, 0, 12809},
		{3, 65537, 65537},
	} {
		if got := maglevSize(tc.n, tc.configured); got != tc.want {
			t.Errorf("maglevSize(%d, %d) = %d, want %d", tc.n, tc.configured, got, tc.want)
		}
	}
}

func BenchmarkMaglevTable(b *testing.B) {
	for _, tc := range []struct{ n, m int }{{100, 10007}, {1000, 1000003}} {
		bs := maglevBackends(maglevEqualWeights(tc.n)...)
		b.Run(fmt.Sprintf("%d/%d", tc.n, tc.m), func(b *testing.B) {
			for b.Loop() {
				maglevTable(bs, tc.m)
			}
		})
	}
}
