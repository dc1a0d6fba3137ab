package lb

import (
	"bytes"
	"cmp"
	"net/netip"
	"slices"

	"github.com/l4nft/l4nft/nft"
)

// A farm's allow and deny lists are ranges of the shared interval sets
// allow4, allow6, deny4 and deny6, keyed by the farm's lasting id . source
// address: one rule looks a client up whatever the farm, and a change of
// a list adds and deletes only the ranges that change. The kernel refuses
// overlapping ranges, so a list is merged into disjoint ranges first.

// addrRange is a range of addresses, first to last inclusive.
type addrRange struct{ first, last netip.Addr }

// mergePrefixes returns the disjoint ranges that prefixes cover, in order.
func mergePrefixes(prefixes []netip.Prefix) []addrRange {
	rs := make([]addrRange, 0, len(prefixes))
	for _, p := range prefixes {
		p = unmapPrefix(p).Masked()
		rs = append(rs, addrRange{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.first.Compare(b.first) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			prev := &out[n-1]
			// Overlapping or adjacent: one range.
			if next := prev.last.Next(); !next.IsValid() || r.first.Compare(next) <= 0 {
				if r.last.Compare(prev.last) > 0 {
					prev.last = r.last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// lastAddr returns the last address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	p = unmapPrefix(p)
	a := p.Addr().AsSlice()
	for i := p.Bits(); i < 8*len(a); i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	out, _ := netip.AddrFromSlice(a)
	return out
}

// listElements returns the set elements of a list for the farm of lasting
// id: each range a start element and, at the address after its last, an
// end element. After the last address of the family, the end is the next
// key in byte order (the id's bytes carried), so ranges never overlap
// another farm's.
func listElements(id uint32, prefixes []netip.Prefix, text func(string, ...any) string) []element {
	var out []element
	for _, r := range mergePrefixes(prefixes) {
		start := append(nft.Mark(id), r.first.AsSlice()...)
		end := append(nft.Mark(id), r.last.AsSlice()...)
		increment(end)
		out = append(out,
			element{Element: nft.Element{Key: start}, text: text("%s . %s-%s", markText(id), r.first, r.last)},
			element{Element: nft.Element{Key: end, IntervalEnd: true}})
	}
	return out
}

// increment adds one to b, a big-endian number, carrying.
func increment(b []byte) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return
		}
	}
}

// listPrefixes reads a farm's list back from its elements: each range as
// the fewest prefixes that cover it. es must be the farm's elements of one
// set, starts and ends.
func listPrefixes(es []element) []netip.Prefix {
	sorted := slices.Clone(es)
	slices.SortFunc(sorted, func(a, b element) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return cmp.Compare(boolInt(!a.IntervalEnd), boolInt(!b.IntervalEnd)) // an end before a start at one key
	})
	var out []netip.Prefix
	for i, e := range sorted {
		if e.IntervalEnd || len(e.Key) < 8 || i+1 >= len(sorted) || !sorted[i+1].IntervalEnd {
			continue
		}
		first, ok1 := netip.AddrFromSlice(e.Key[4:])
		endKey := slices.Clone(sorted[i+1].Key)
		last, ok2 := netip.AddrFromSlice(endKey[4:])
		if !ok1 || !ok2 {
			continue
		}
		last = last.Prev()
		if !last.IsValid() || bytes.Equal(endKey[4:], make([]byte, len(endKey)-4)) {
			// The end was carried into the id: the range runs to the
			// family's last address.
			last = lastAddr(netip.PrefixFrom(first, 0))
		}
		out = append(out, rangePrefixes(first, last)...)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// rangePrefixes returns the fewest prefixes that cover first..last.
func rangePrefixes(first, last netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for first.IsValid() && first.Compare(last) <= 0 {
		bits := first.BitLen()
		// The shortest prefix that starts at first and ends by last.
		for bits > 0 {
			p := netip.PrefixFrom(first, bits-1).Masked()
			if p.Addr() != first || lastAddr(p).Compare(last) > 0 {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(first, bits)
		out = append(out, p)
		end := lastAddr(p)
		if end == last {
			break
		}
		first = end.Next()
	}
	return out
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix into its IPv4 prefix.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() {
		return netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
	}
	return p
}
