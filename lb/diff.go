package lb

import (
	"slices"

	"github.com/l4nft/l4nft/nft"
)

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

// elements are a farm's elements (or garbage) by set name.
type elements map[string][]element

// schedule returns the schedule ranges among es, whichever map holds them.
func (es elements) schedule() []element {
	var out []element
	for set, s := range es {
		if isSchedule(set) {
			out = append(out, s...)
		}
	}
	return out
}

// index returns the elements by ID.
func index(es []element) map[string]element {
	m := make(map[string]element, len(es))
	for _, e := range es {
		m[elementID(e.Element)] = e
	}
	return m
}

// elementDiff adds to del and add what turns have into want, per set.
func elementDiff(have, want elements, del, add elements) {
	for set, hs := range have {
		del[set] = appendMissing(del[set], hs, want[set])
	}
	for set, ws := range want {
		add[set] = appendMissing(add[set], ws, have[set])
	}
}

// appendMissing appends to out the elements of from that are not, as they
// are, in other.
func appendMissing(out, from, other []element) []element {
	if len(other) == 0 {
		return append(out, from...)
	}
	oi := index(other)
	for _, e := range from {
		if o, ok := oi[elementID(e.Element)]; !ok || !sameElement(o.Element, e.Element) {
			out = append(out, e)
		}
	}
	return out
}

// sameSetElements reports whether two lists hold the same elements.
func sameSetElements(a, b []element) bool {
	if len(a) != len(b) {
		return false
	}
	bi := index(b)
	for _, x := range a {
		if y, ok := bi[elementID(x.Element)]; !ok || !sameElement(x.Element, y.Element) {
			return false
		}
	}
	return true
}

// sameElements reports whether two farms' elements are the same.
func sameElements(a, b elements) bool {
	for set := range a {
		if !sameSetElements(a[set], b[set]) {
			return false
		}
	}
	for set := range b {
		if _, ok := a[set]; !ok && len(b[set]) > 0 {
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
		slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Backends, b.Backends) &&
		slices.Equal(a.HashFields, b.HashFields) && a.Slots == b.Slots &&
		(a.Persistence == nil) == (b.Persistence == nil) && (a.Persistence == nil || *a.Persistence == *b.Persistence) &&
		(a.Limits == nil) == (b.Limits == nil) && (a.Limits == nil || *a.Limits == *b.Limits) &&
		a.TCPStrict == b.TCPStrict && slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Deny, b.Deny) &&
		slices.Equal(a.Helpers, b.Helpers)
}

// Clone returns a deep copy of f: it shares no slice or pointer with f.
func (f Farm) Clone() Farm {
	f.Ports = slices.Clone(f.Ports)
	f.Backends = slices.Clone(f.Backends)
	f.HashFields = slices.Clone(f.HashFields)
	if f.Persistence != nil {
		p := *f.Persistence
		f.Persistence = &p
	}
	if f.Limits != nil {
		l := *f.Limits
		f.Limits = &l
	}
	f.Allow, f.Deny, f.Helpers = slices.Clone(f.Allow), slices.Clone(f.Deny), slices.Clone(f.Helpers)
	return f
}

func cloneState(s State) State {
	out := State{Farms: slices.Clone(s.Farms)}
	for i := range out.Farms {
		out.Farms[i] = out.Farms[i].Clone()
	}
	return out
}
