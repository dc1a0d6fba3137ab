package lb

// markTable hands out conntrack marks: one per farm (the farm's schedule
// generation) and one per backend. Marks are indexes shifted into
// Options.MarkMask. A released mark is not handed out again until the
// search cursor has gone round the whole range, so that conntrack entries
// still carrying a removed backend's mark do not meet a new backend.
type markTable struct {
	owner map[objectKey]uint32
	used  map[uint32]bool
	next  uint32 // index the next search starts after
	max   uint32 // largest index
	shift int
}

func newMarkTable(o Options) *markTable {
	return &markTable{
		owner: map[objectKey]uint32{},
		used:  map[uint32]bool{},
		max:   uint32(o.MaxMarks()),
		shift: o.markShift(),
	}
}

// marks is a tentative view of a markTable for one plan: lookups fall
// through to the table, and changes stay here until commit.
type marks struct {
	t        *markTable
	set      map[objectKey]uint32
	dropped  map[objectKey]bool
	taken    map[uint32]bool
	released []uint32
	next     uint32
}

func (t *markTable) begin() *marks {
	return &marks{t: t, set: map[objectKey]uint32{}, dropped: map[objectKey]bool{}, taken: map[uint32]bool{}, next: t.next}
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

// ensure returns k's mark, allocating one if k has none. It returns false
// when every mark is in use.
func (m *marks) ensure(k objectKey) (uint32, bool) {
	if v := m.get(k); v != 0 {
		return v, true
	}
	return m.renew(k)
}

// renew gives k a new mark; its old one stays in use until released.
func (m *marks) renew(k objectKey) (uint32, bool) {
	for range m.t.max {
		m.next = m.next%m.t.max + 1
		v := m.next << m.t.shift
		if !m.t.used[v] && !m.taken[v] {
			m.taken[v] = true
			m.set[k] = v
			delete(m.dropped, k)
			return v, true
		}
	}
	return 0, false
}

// drop forgets k's mark; release frees a mark for reuse.
func (m *marks) drop(k objectKey) { m.dropped[k] = true; delete(m.set, k) }
func (m *marks) release(v uint32) { m.released = append(m.released, v) }

// commit makes the view the table's state.
func (m *marks) commit() {
	for k := range m.dropped {
		delete(m.t.owner, k)
	}
	for k, v := range m.set {
		m.t.owner[k] = v
	}
	for v := range m.taken {
		m.t.used[v] = true
	}
	for _, v := range m.released {
		delete(m.t.used, v)
	}
	m.t.next = m.next
}
