package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/l4nft/l4nft/nft"
)

func TestApportionGivesSharesWithinOneSlot(t *testing.T) {
	for _, weights := range [][]int{{1}, {1, 2}, {1, 2, 3, 4}, {1, 1000}, {10000, 1, 7, 7}, {1, 1, 1}} {
		got := apportion(weights, scheduleSlots)
		total, sum := 0, 0
		for _, w := range weights {
			total += w
		}
		for i, n := range got {
			sum += int(n)
			exact := float64(scheduleSlots) * float64(weights[i]) / float64(total)
			if d := float64(n) - exact; d <= -1 || d >= 1 || n == 0 {
				t.Errorf("weights %v: backend %d has %d slots, exact share %.2f", weights, i, n, exact)
			}
		}
		if sum != scheduleSlots {
			t.Errorf("weights %v: %d slots given, want %d", weights, sum, scheduleSlots)
		}
	}
	// A share too small for one slot still gets one.
	if got := apportion([]int{1, 1 << 30}, 16); got[0] != 1 || got[1] != 15 {
		t.Errorf("apportion tiny share = %v, want [1 15]", got)
	}
}

// farms returns a state of n farms of two backends each.
func farms(n int) State {
	var s State
	for i := range n {
		f := validFarm(fmt.Sprintf("f%d", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 250)}).String())
		f.Ports = []PortRange{Port(uint16(1000 + i))}
		s.Farms = append(s.Farms, f)
	}
	return s
}

// installed returns a Balancer that believes s is in the kernel.
func installed(t testing.TB, s State, o Options) *Balancer {
	t.Helper()
	if err := Validate(s, o); err != nil {
		t.Fatal(err)
	}
	b := &Balancer{opts: o.withDefaults()}
	b.reset()
	p, err := b.plan(s)
	if err != nil {
		t.Fatal(err)
	}
	b.commit(p)
	b.setOrder(s)
	return b
}

func TestPlanIsProportionalToTheChange(t *testing.T) {
	tests := []struct {
		name         string
		change       func(s *State)
		wantMessages int
		wantElements int
	}{
		{"unchanged", func(s *State) {}, 0, 0},
		// A new schedule generation: the service names the farm's new
		// mark (1 out, 1 in), the new schedule goes in (2 ranges, 4
		// elements; the old one is left for Collect), the backend's record
		// changes (1 out, 1 in).
		{"weight", func(s *State) { s.Farms[500].Backends[0].Weight = 5 }, 5, 8},
		{"drain", func(s *State) { s.Farms[500].Backends[0].State = Drain }, 5, 6},
		// Service 2, schedule 6 in; dnat, masquerade, traffic, record in.
		{"add backend", func(s *State) {
			s.Farms[500].Backends = append(s.Farms[500].Backends, Backend{Name: "app2", Address: addr("203.0.113.12"), Weight: 1})
		}, 7, 12},
		{"remove backend", func(s *State) { s.Farms[500].Backends = s.Farms[500].Backends[1:] }, 7, 8},
		{"backend address", func(s *State) { s.Farms[500].Backends[1].Address = addr("203.0.113.99") }, 2, 2},
		// The service and 2 backends x 4; the schedule is left for Collect.
		{"remove farm", func(s *State) { s.Farms = append(s.Farms[:500], s.Farms[501:]...) }, 5, 9},
		{"reorder backends", func(s *State) { slices.Reverse(s.Farms[500].Backends) }, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := farms(1000)
			b := installed(t, s, Options{})
			tt.change(&s)
			p, err := b.plan(s)
			if err != nil {
				t.Fatal(err)
			}
			batch := p.batch
			if err := batch.Err(); err != nil {
				t.Fatal(err)
			}
			if batch.Messages() != tt.wantMessages || batch.Elements() != tt.wantElements {
				t.Errorf("batch has %d messages, %d elements; want %d, %d",
					batch.Messages(), batch.Elements(), tt.wantMessages, tt.wantElements)
			}
		})
	}
}

func TestMarksAreStableAndNotReusedAtOnce(t *testing.T) {
	s := farms(2)
	b := installed(t, s, Options{})
	before := b.marks.owner[objectKey{"f0", "app1"}]
	// Remove f0/app0 and add f1/app2: the new backend must not inherit
	// app0's mark, whose connections may still be in conntrack.
	old := b.marks.owner[objectKey{"f0", "app0"}]
	s.Farms[0].Backends = s.Farms[0].Backends[1:]
	s.Farms[1].Backends = append(s.Farms[1].Backends, Backend{Name: "app2", Address: addr("203.0.113.12"), Weight: 1})
	p, err := b.plan(s)
	if err != nil {
		t.Fatal(err)
	}
	b.commit(p)
	if got := b.marks.owner[objectKey{"f0", "app1"}]; got != before {
		t.Errorf("f0/app1 changed mark %#x -> %#x", before, got)
	}
	if m := b.marks.owner[objectKey{"f1", "app2"}]; m == old || m&^DefaultMarkMask != 0 || m == 0 {
		t.Errorf("new backend got mark %#x (removed backend had %#x; mask %#x)", m, old, DefaultMarkMask)
	}
	if _, ok := b.marks.owner[objectKey{"f0", "app0"}]; ok || b.marks.used[old] {
		t.Errorf("removed backend's mark %#x is still held", old)
	}
}

func TestGarbageIsCollectedAndItsMarksFreed(t *testing.T) {
	s := farms(3)
	b := installed(t, s, Options{})
	oldID := b.marks.owner[objectKey{"f1", ""}]
	s.Farms[1].Backends[0].Weight = 9
	p, err := b.plan(s)
	if err != nil {
		t.Fatal(err)
	}
	b.commit(p)
	if newID := b.marks.owner[objectKey{"f1", ""}]; newID == oldID {
		t.Fatalf("farm kept mark %#x across a schedule change", oldID)
	}
	if got := len(b.garbage[setSchedule.Name]); got != 4 || !b.marks.used[oldID] {
		t.Fatalf("garbage holds %d schedule elements (want 4), old mark held: %v", got, b.marks.used[oldID])
	}
	// Two farms changed in one apply: both old schedules are garbage.
	s.Farms[0].Backends[0].Weight = 9
	s.Farms[2].Backends[0].Weight = 9
	if p, err = b.plan(s); err != nil {
		t.Fatal(err)
	}
	b.commit(p)
	if got := len(b.garbage[setSchedule.Name]); got != 12 || len(b.garbageMarks) != 3 {
		t.Fatalf("after two more farms changed: %d garbage elements (want 12), %d garbage marks (want 3)", got, len(b.garbageMarks))
	}
	// Marks run out: plan asks for a Collect rather than reusing a mark
	// that a garbage schedule still names.
	tight := Options{MarkMask: 0xf}.withDefaults()
	b2 := installed(t, farms(1), tight) // 3 marks of 15 used
	s2 := farms(1)
	for i := range 5 { // 5 generations, 1 more mark each
		s2.Farms[0].Backends[0].Weight = 2 + i
		p, err := b2.plan(s2)
		if err != nil {
			t.Fatal(err)
		}
		b2.commit(p)
	}
	s2.Farms = append(s2.Farms, validFarm("x", "198.51.100.77"), validFarm("y", "198.51.100.78"), validFarm("z", "198.51.100.79"))
	if err := Validate(s2, tight); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.plan(s2); !errors.Is(err, errMarksExhausted) {
		t.Errorf("plan with marks held by garbage = %v, want errMarksExhausted", err)
	}
}

func TestStateSurvivesTheKernelRoundTrip(t *testing.T) {
	s := farms(3)
	s.Farms[0].Protocol = TCPUDP
	s.Farms[0].Ports = []PortRange{Port(80), {8000, 8010}}
	s.Farms[1].Mode = DNAT
	s.Farms[1].Backends[0].State = Drain
	s.Farms[1].Backends[1].Port = 0
	s.Farms[2].Protocol = UDP
	s.Farms[2].Source = addr("198.51.100.2")
	s.Farms[2].Backends[1].State = Down
	v6 := validFarm("v6", "2001:db8:f::1")
	v6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Port: 8443, Weight: 3}}
	s.Farms = append(s.Farms, v6, Farm{Name: "empty", Address: addr("198.51.100.9"), Ports: []PortRange{Port(9)}})
	b := installed(t, s, Options{})
	kernel := map[string][]nft.Element{}
	for _, c := range b.farms {
		for set, es := range c.elements {
			for _, e := range es {
				kernel[set] = append(kernel[set], e.Element)
			}
		}
	}
	a, err := adopt(kernel)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.marks, b.marks.owner) {
		t.Errorf("marks = %v, want %v", a.marks, b.marks.owner)
	}
	var got State
	for _, name := range a.order {
		if a.farms[name].dirty {
			t.Errorf("farm %s read back dirty", name)
		}
		got.Farms = append(got.Farms, a.farms[name].spec)
	}
	// The kernel keeps farms and backends sorted by name.
	want := sortedState(s)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("state read back differs\ngot:  %+v\nwant: %+v", got, want)
	}
}

func sortedState(s State) State {
	s = cloneState(s)
	byName := map[string]Farm{}
	for _, f := range s.Farms {
		byName[f.Name] = f
	}
	var out State
	for _, n := range sortedKeys(byName) {
		f := byName[n]
		bs := map[string]Backend{}
		for _, b := range f.Backends {
			bs[b.Name] = b
		}
		f.Backends = nil
		for _, bn := range sortedKeys(bs) {
			f.Backends = append(f.Backends, bs[bn])
		}
		out.Farms = append(out.Farms, f)
	}
	return out
}

func TestRenderShowsSeedAndTranslation(t *testing.T) {
	s := State{Farms: []Farm{validFarm("web", "198.51.100.250")}}
	out, err := Render(s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table inet l4nft {",
		"ct mark set ct mark . numgen random mod 16777216 map @schedule",
		"ct state new jump choose_backend",
		"0x00010000 . 0-5592404 comment \"web/app0\" : 0x00020000",
		"0x00010000 . 5592405-16777215 comment \"web/app1\" : 0x00030000",
		"198.51.100.250 . tcp . 443 comment \"farm=web mode=nat scheduler=weight\" : 0x00010000",
		"0x00020000 comment \"web/app0\" : 203.0.113.10 . 443",
		"type filter hook prerouting priority -199; policy accept;",
		"dnat ip to ct mark & 0xffff0000 map @dnat4",
		"ct mark & 0xffff0000 @masq_backends masquerade",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render() lacks %q", want)
		}
	}
	again, _ := Render(s, Options{})
	if again != out {
		t.Error("Render() is not deterministic")
	}
	if _, err := Render(State{Farms: []Farm{{Name: "bad"}}}, Options{}); err == nil {
		t.Error("Render() of an invalid state succeeded")
	}
}
