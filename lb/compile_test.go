package lb

import (
	"fmt"
	"math/big"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestCascadeGivesExactShares(t *testing.T) {
	for _, weights := range [][]int{{1}, {1, 2}, {1, 2, 3, 4}, {1, 1000}, {10000, 1, 7, 7}} {
		steps := cascade(weights)
		total := 0
		for _, w := range weights {
			total += w
		}
		reach := big.NewRat(1, 1) // probability that a draw reaches step i
		for i, s := range steps {
			take := big.NewRat(int64(s.below), int64(s.modulus))
			got := new(big.Rat).Mul(reach, take)
			if want := big.NewRat(int64(weights[i]), int64(total)); got.Cmp(want) != 0 {
				t.Errorf("weights %v: backend %d share = %v, want %v", weights, i, got, want)
			}
			reach.Mul(reach, new(big.Rat).Sub(big.NewRat(1, 1), take))
		}
		if last := steps[len(steps)-1]; last.below != last.modulus {
			t.Errorf("weights %v: last step %v must always match", weights, last)
		}
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
func installed(t *testing.T, s State, o Options) *Balancer {
	t.Helper()
	if err := Validate(s, o); err != nil {
		t.Fatal(err)
	}
	b := &Balancer{opts: o.withDefaults(), installed: newRuleset(), rebuild: true}
	marks, next := b.allocateMarks(s)
	b.installed, b.rebuild, b.state, b.marks, b.nextMark = compile(s, b.opts, marks), false, cloneState(s), marks, next
	return b
}

func TestDiffIsProportionalToTheChange(t *testing.T) {
	tests := []struct {
		name         string
		change       func(s *State)
		wantMessages int
		wantElements int
	}{
		{"unchanged", func(s *State) {}, 0, 0},
		// flush chain + 2 rules + delete and add of the backend's record.
		{"weight", func(s *State) { s.Farms[500].Backends[0].Weight = 5 }, 5, 2},
		// the farm chain loses the backend: flush + 1 rule; record replaced.
		{"drain", func(s *State) { s.Farms[500].Backends[0].State = Drain }, 4, 2},
		// dnat, masquerade, traffic, record: one add message each; chain rewritten with 3 rules.
		{"add backend", func(s *State) {
			s.Farms[500].Backends = append(s.Farms[500].Backends, Backend{Name: "app2", Address: addr("203.0.113.12"), Weight: 1})
		}, 8, 4},
		{"remove backend", func(s *State) { s.Farms[500].Backends = s.Farms[500].Backends[1:] }, 6, 4},
		{"backend address", func(s *State) { s.Farms[500].Backends[1].Address = addr("203.0.113.99") }, 2, 2},
		// service element and the farm's 2 backends x 4 elements, chain flushed and deleted.
		{"remove farm", func(s *State) { s.Farms = append(s.Farms[:500], s.Farms[501:]...) }, 7, 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := farms(1000)
			b := installed(t, s, Options{})
			tt.change(&s)
			marks, _ := b.allocateMarks(s)
			batch := b.diff(compile(s, b.opts, marks))
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
	before := b.marks[backendKey{"f0", "app1"}]
	// Remove f0/app0 and add f1/app2: the new backend must not inherit
	// app0's mark, whose connections may still be in conntrack.
	old := b.marks[backendKey{"f0", "app0"}]
	s.Farms[0].Backends = s.Farms[0].Backends[1:]
	s.Farms[1].Backends = append(s.Farms[1].Backends, Backend{Name: "app2", Address: addr("203.0.113.12"), Weight: 1})
	marks, _ := b.allocateMarks(s)
	if marks[backendKey{"f0", "app1"}] != before {
		t.Errorf("f0/app1 changed mark %#x -> %#x", before, marks[backendKey{"f0", "app1"}])
	}
	if m := marks[backendKey{"f1", "app2"}]; m == old || m&^DefaultMarkMask != 0 || m == 0 {
		t.Errorf("new backend got mark %#x (removed backend had %#x; mask %#x)", m, old, DefaultMarkMask)
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
	got, marks, err := stateFromElements(b.installed)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(marks, b.marks) {
		t.Errorf("marks = %v, want %v", marks, b.marks)
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
		"chain farm_web {",
		"numgen random mod 3 < 1 ct mark set ct mark & 0x0000ffff | 0x00010000 return comment \"web/app0\"",
		"# replaces: iptables -t mangle -A PREROUTING -d 198.51.100.250 -m statistic --mode random --probability 0.33333333333 -j MARK --set-mark 0x00010000",
		"198.51.100.250 . tcp . 443 comment \"farm=web mode=nat scheduler=weight\" : jump farm_web",
		"0x00010000 comment \"web/app0\" : 203.0.113.10 . 443",
		"type filter hook prerouting priority mangle; policy accept;",
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
