package lb

import (
	"slices"

	"github.com/l4nft/l4nft/nft"
)

// rule is one rule as l4nft builds it: the expressions sent to the kernel
// and the same rule in nft syntax, for Render.
type rule struct {
	nft.Rule
	text string
	// seed is the iptables rule of the seed design this rule replaces.
	seed string
}

// chain is a base chain with its rules; hook is its hook line in nft syntax.
type chain struct {
	nft.Chain
	hook  string
	rules []rule
}

// element is a set element and, for Render, its nft syntax ("" for the
// end element of a range, which nft writes as part of the range).
type element struct {
	nft.Element
	text string
}

// elementID identifies an element within its set.
func elementID(e nft.Element) string {
	id := string(e.Key) + "\x00" + string(e.KeyEnd)
	if e.IntervalEnd {
		id += "\x00end"
	}
	return id
}

// sameElement reports whether two elements with the same ID are the same.
func sameElement(a, b nft.Element) bool {
	return string(a.Value) == string(b.Value) && a.Comment == b.Comment
}

// elementDiff adds to del and add what turns have into want, per set.
func elementDiff(have, want map[string]map[string]element, del, add map[string][]nft.Element) {
	for set, hs := range have {
		ws := want[set]
		for id, h := range hs {
			if w, ok := ws[id]; !ok || !sameElement(w.Element, h.Element) {
				del[set] = append(del[set], h.Element)
			}
		}
	}
	for set, ws := range want {
		hs := have[set]
		for id, w := range ws {
			if h, ok := hs[id]; !ok || !sameElement(w.Element, h.Element) {
				add[set] = append(add[set], w.Element)
			}
		}
	}
}

// sameSetElements reports whether two sets of elements are the same.
func sameSetElements(a, b map[string]element) bool {
	if len(a) != len(b) {
		return false
	}
	for id, x := range a {
		if y, ok := b[id]; !ok || !sameElement(x.Element, y.Element) {
			return false
		}
	}
	return true
}

// sameFarm reports whether two farms compile to the same elements, marks
// aside.
func sameFarm(a, b Farm) bool {
	return a.Name == b.Name && a.Address == b.Address && a.Protocol == b.Protocol &&
		a.Mode == b.Mode && a.Scheduler == b.Scheduler && a.Source == b.Source &&
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Backends, b.Backends)
}

func cloneFarm(f Farm) Farm {
	f.Ports = slices.Clone(f.Ports)
	f.Backends = slices.Clone(f.Backends)
	return f
}

func cloneState(s State) State {
	out := State{Farms: slices.Clone(s.Farms)}
	for i := range out.Farms {
		out.Farms[i] = cloneFarm(out.Farms[i])
	}
	return out
}
