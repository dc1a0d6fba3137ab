package lb

import "hash/fnv"

// markTable hands out conntrack marks: one per backend, kept for the
// backend's life, and one per farm, which changes with every change of
// the farm's schedule (see plan). A mark is derived from the object's name:
// the first free index in a linear probe that starts at a hash of
// "farm/backend". So the same configuration gives the same marks on every
// node and after every rebuild, whatever the order of the changes that led
// to it, unless two names hash to the same index: then the one installed
// first keeps it and the other takes the next free one (Result.Collisions
// counts these, and with the default 24-bit mask they are rare: see
// Options.MarkMask). Conntrack entries synced from another node therefore
// name the same backends here, and a removed backend's mark is reused only
// by a backend that hashes to it.
type markTable struct {
	owner map[objectKey]uint32
	used  map[uint32]objectKey
	max   uint32 // largest index
	shift int
}

func newMarkTable(o Options) *markTable {
	return &markTable{
		owner: map[objectKey]uint32{},
		used:  map[uint32]objectKey{},
		max:   uint32(o.MaxMarks()),
		shift: o.markShift(),
	}
}

// home is the index k's probe starts at, 1 to max.
func (t *markTable) home(k objectKey) uint32 {
	h := fnv.New64a()
	h.Write([]byte(k.farm))
	h.Write([]byte{'/'})
	h.Write([]byte(k.backend))
	return uint32(h.Sum64()%uint64(t.max)) + 1
}

// marks is a tentative view of a markTable for one plan: lookups fall
// through to the table, and changes stay here until commit. Marks released
// by the plan stay taken until it is committed, so that one plan never
// gives a mark that leaves to something that arrives.
type marks struct {
	t          *markTable
	set        map[objectKey]uint32
	dropped    map[objectKey]bool
	taken      map[uint32]bool
	released   []uint32
	collisions int
}

func (t *markTable) begin() *marks {
	return &marks{t: t, set: map[objectKey]uint32{}, dropped: map[objectKey]bool{}, taken: map[uint32]bool{}}
}

// get returns k's mark, or 0.
func (m *marks) get(k objectKey) uint32 {
	if v, ok := m.set[k]; ok {
		return v
	}
	if m.dropped[k] {
		return 0
	}
	return m.t.owner[k]
}

// installed reports whether mark v was in use before this plan.
func (m *marks) installed(v uint32) bool {
	_, ok := m.t.used[v]
	return ok
}

// live reports whether mark v is in use once the plan is committed.
func (m *marks) live(v uint32) bool {
	if m.taken[v] {
		return true
	}
	k, ok := m.t.used[v]
	return ok && m.get(k) == v
}

// ensure returns k's mark, allocating one if k has none. It returns false
// when every mark is in use.
func (m *marks) ensure(k objectKey) (uint32, bool) {
	if v := m.get(k); v != 0 {
		return v, true
	}
	i := m.t.home(k)
	for range m.t.max {
		v := i << m.t.shift
		if _, used := m.t.used[v]; !used && !m.taken[v] {
			m.taken[v] = true
			m.set[k] = v
			delete(m.dropped, k)
			return v, true
		}
		m.collisions++
		i = i%m.t.max + 1
	}
	return 0, false
}

// renew gives k a new mark; the old one stays taken until the plan is
// committed.
func (m *marks) renew(k objectKey) (uint32, bool) {
	if old := m.get(k); old != 0 {
		m.released = append(m.released, old)
	}
	delete(m.set, k)
	m.dropped[k] = true
	return m.ensure(k)
}

// drop releases k's mark when the plan is committed.
func (m *marks) drop(k objectKey) { m.dropped[k] = true; delete(m.set, k) }

// commit makes the view the table's state.
func (m *marks) commit() {
	for k := range m.dropped {
		if v, ok := m.t.owner[k]; ok {
			delete(m.t.used, v)
			delete(m.t.owner, k)
		}
	}
	for _, v := range m.released {
		delete(m.t.used, v)
	}
	for k, v := range m.set {
		m.t.owner[k] = v
		m.t.used[v] = k
	}
}
