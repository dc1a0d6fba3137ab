package lb

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/l4nft/l4nft/nft"
)

// installed returns a Balancer on a fake kernel that holds s.
func installed(t testing.TB, s State, o Options) (*Balancer, *fakeKernel) {
	t.Helper()
	k := newFakeKernel()
	b := openFake(t, k, o, nil)
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return b, k
}

// sent sums what the commits after the first n held.
func sent(k *fakeKernel, n int) (transactions, messages, elements int) {
	for _, c := range k.commits[n:] {
		transactions++
		messages += c.Messages()
		elements += c.Elements()
	}
	return
}

func TestApplyIsProportionalToTheChange(t *testing.T) {
	tests := []struct {
		name                         string
		change                       func(s *State)
		transactions, msgs, elements int
	}{
		{"unchanged", func(s *State) {}, 0, 0, 0},
		// The new schedule (4) and farm record in; the service and the
		// backend's record re-pointed (out, in); the old schedule and
		// farm record out.
		{"weight", func(s *State) { s.Farms[500].Backends[0].Weight = 5 }, 3, 8, 14},
		// As a weight, with a schedule of one range.
		{"drain", func(s *State) { s.Farms[500].Backends[0].State = Drain }, 3, 8, 12},
		// The new backend's dnat, masquerade, traffic and record go in
		// with the new schedule (6) and farm record.
		{"add backend", func(s *State) {
			s.Farms[500].Backends = append(s.Farms[500].Backends, Backend{Name: "app2", Address: addr("203.0.113.12"), Weight: 1})
		}, 3, 10, 18},
		// The old backend's 4 elements go with the old schedule.
		{"remove backend", func(s *State) { s.Farms[500].Backends = s.Farms[500].Backends[1:] }, 3, 10, 14},
		{"backend address", func(s *State) { s.Farms[500].Backends[1].Address = addr("203.0.113.99") }, 1, 2, 2},
		// The service out; then the farm's record, schedule (4) and 2
		// backends x 4.
		{"remove farm", func(s *State) { s.Farms = slices.Delete(s.Farms, 500, 501) }, 2, 7, 14},
		{"reorder backends", func(s *State) { slices.Reverse(s.Farms[500].Backends) }, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := farms(1000)
			b, k := installed(t, s, Options{})
			n := len(k.commits)
			tt.change(&s)
			res, err := b.Apply(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			tr, m, e := sent(k, n)
			if tr != tt.transactions || m != tt.msgs || e != tt.elements {
				t.Errorf("sent %d transactions, %d messages, %d elements; want %d, %d, %d",
					tr, m, e, tt.transactions, tt.msgs, tt.elements)
			}
			if res.Changed != (tt.transactions > 0) || res.Transactions != tr {
				t.Errorf("Result = %+v", res)
			}
			// Whatever was sent, the fake now holds exactly what a fresh
			// install of s holds.
			_, fresh := installed(t, s, Options{})
			if diff := compareKernels(k, fresh); diff != "" {
				t.Errorf("after the change the kernel differs from a fresh install: %s", diff)
			}
		})
	}
}

// compareKernels says how two fakes' elements differ ("" if not). Farm
// marks depend on history (each schedule change takes a new one), so they
// are compared by the farm they name.
func compareKernels(a, b *fakeKernel) string {
	for _, s := range allSets {
		if isSchedule(s.Name) && s.Name != scheduleSets[0].Name {
			continue // all compared as one, with the first
		}
		ea, eb := normalized(a, s), normalized(b, s)
		if len(ea) != len(eb) {
			return fmt.Sprintf("set %s has %d elements, want %d", s.Name, len(ea), len(eb))
		}
		for id, e := range eb {
			if o, ok := ea[id]; !ok || !sameElement(o, e) {
				return fmt.Sprintf("set %s: element %x is %+v, want %+v", s.Name, e.Key, o, e)
			}
		}
	}
	return ""
}

// normalized returns a set's elements with farm marks replaced by the
// farm's name; for a schedule map, those of all of them.
func normalized(k *fakeKernel, s nft.Set) map[string]nft.Element {
	farm := map[uint32]string{}
	for _, e := range k.elems[setFarms.Name] {
		farm[nft.ParseMark(e.Key)] = parseComment(e.Comment)["farm"]
	}
	var es []nft.Element
	for _, e := range k.elems[s.Name] {
		es = append(es, e)
	}
	if isSchedule(s.Name) {
		es = nil
		for _, set := range scheduleSets {
			for _, e := range k.elems[set.Name] {
				es = append(es, e)
			}
		}
	}
	out := map[string]nft.Element{}
	for _, e := range es {
		switch {
		case s.Name == setFarms.Name:
			e.Key = []byte(farm[nft.ParseMark(e.Key)])
			// The comment names the farm, and its options.
		case s.Name == setFarmChains.Name:
			e.Key = []byte(farm[nft.ParseMark(e.Key)])
			e.Jump = "chain of " + string(e.Key)
		case s.Name == setPersistOK.Name:
			e.Key = append([]byte(farm[nft.ParseMark(e.Key)]+"."), e.Key[4:]...)
		case isSchedule(s.Name):
			e.Key = append([]byte(farm[scheduleFarm(e.Key)]+"."), e.Key[4:]...)
			if len(e.KeyEnd) > 0 {
				e.KeyEnd = e.KeyEnd[4:]
			}
		case isService(s.Name):
			e.Value = []byte(farm[nft.ParseMark(e.Value)])
		}
		out[elementID(e)] = e
	}
	return out
}

func TestSetFarmAndRemoveFarmTouchOneFarm(t *testing.T) {
	s := farms(100)
	b, k := installed(t, s, Options{})
	ctx := context.Background()
	f := s.Farms[7]
	f.Backends[1].Weight = 9
	n := len(k.commits)
	if _, err := b.SetFarm(ctx, f); err != nil {
		t.Fatal(err)
	}
	if _, _, e := sent(k, n); e != 14 {
		t.Errorf("SetFarm of one weight sent %d elements, want 14", e)
	}
	// A new farm whose port another farm serves is refused, and nothing
	// is sent.
	clash := validFarm("clash", s.Farms[3].Address.String())
	clash.Ports = s.Farms[3].Ports
	n = len(k.commits)
	_, err := b.SetFarm(ctx, clash)
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Field != "ports" || len(k.commits) != n {
		t.Fatalf("SetFarm of a clashing farm = %v, want one ports problem and nothing sent", err)
	}
	if _, err := b.RemoveFarm(ctx, "f3"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SetFarm(ctx, clash); err != nil {
		t.Fatalf("SetFarm after the other farm left: %v", err)
	}
	if _, err := b.RemoveFarm(ctx, "nope"); !errors.Is(err, ErrNoFarm) {
		t.Errorf("RemoveFarm(nope) = %v, want ErrNoFarm", err)
	}
	want := s.Farms
	want[7] = f
	want = slices.Delete(want, 3, 4)
	want = append(want, clash)
	if got := b.State(); !reflect.DeepEqual(sortedState(got), sortedState(State{Farms: want})) {
		t.Errorf("State() after SetFarm/RemoveFarm differs")
	}
	_, fresh := installed(t, State{Farms: want}, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Error(diff)
	}
}

func TestSameStateGivesSameMarksWhateverTheHistory(t *testing.T) {
	ctx := context.Background()
	final := farms(50)
	// Node A installs the final state at once. Node B starts elsewhere,
	// adds and removes farms and backends, and ends at the same state.
	a, _ := installed(t, final, Options{})
	start := farms(60)
	slices.Reverse(start.Farms)
	for i := range start.Farms {
		start.Farms[i].Backends = append(start.Farms[i].Backends, Backend{Name: "extra", Address: addr("203.0.113.50"), Weight: 3})
	}
	b, _ := installed(t, start, Options{})
	for i := 10; i < 50; i += 10 {
		if _, err := b.Apply(ctx, State{Farms: final.Farms[:i]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Apply(ctx, final); err != nil {
		t.Fatal(err)
	}
	backendMarks := func(b *Balancer) map[objectKey]uint32 {
		m := map[objectKey]uint32{}
		for k, v := range b.marks.owner {
			if k.backend != "" {
				m[k] = v
			}
		}
		return m
	}
	if !reflect.DeepEqual(backendMarks(a), backendMarks(b)) {
		t.Errorf("two nodes with the same state disagree on backend marks")
	}
}

func TestAFullMarkRangeCanStillChange(t *testing.T) {
	// 15 marks, 14 used by 4 farms of 2 backends and 1 of 1: all but
	// the spare.
	o := Options{MarkMask: 0xf}
	s := farms(4)
	extra := validFarm("x", "198.51.100.200")
	extra.Backends = extra.Backends[:1]
	s.Farms = append(s.Farms, extra)
	b, _ := installed(t, s, o)
	if len(b.marks.used) != 14 {
		t.Fatalf("%d marks used, want 14", len(b.marks.used))
	}
	s.Farms[2].Backends[0].Weight = 7
	s.Farms[3].Backends[1].State = Down
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("changing weights with every mark in use: %v", err)
	}
}

func TestRemovedBackendsMarkIsNotGivenAwayInTheSamePlan(t *testing.T) {
	o := Options{MarkMask: 0xf}
	s := farms(4) // 12 of 15 marks, one spare
	b, _ := installed(t, s, o)
	old := b.marks.owner[objectKey{"f0", "app0"}]
	s.Farms[0].Backends = s.Farms[0].Backends[1:]
	for i := range 2 {
		s.Farms[1].Backends = append(s.Farms[1].Backends, Backend{Name: fmt.Sprintf("n%d", i), Address: addr("203.0.113.12"), Weight: 1})
	}
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if m := b.marks.owner[objectKey{"f1", fmt.Sprintf("n%d", i)}]; m == old {
			t.Errorf("new backend n%d got the removed backend's mark %#x at once", i, old)
		}
	}
	// Now it is free again: a backend can take it.
	s.Farms[0].Backends = append(s.Farms[0].Backends, Backend{Name: "last", Address: addr("203.0.113.12"), Weight: 1})
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("taking the last free mark: %v", err)
	}
}

func TestRefusedChangeChangesNothing(t *testing.T) {
	s := farms(10)
	b, k := installed(t, s, Options{})
	before := b.State()
	n := len(k.commits)
	s.Farms[4].Backends[0].State = Drain
	k.failNext = syscall.EINVAL // the kernel refuses the first transaction
	if _, err := b.Apply(context.Background(), s); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Apply = %v, want EINVAL", err)
	}
	if len(k.commits) != n {
		t.Errorf("%d transactions committed after a refused first one", len(k.commits)-n)
	}
	if got := b.State(); !reflect.DeepEqual(got, before) {
		t.Errorf("State changed by a refused change")
	}
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("Apply again: %v", err)
	}
}

func TestChangeRefusedPartWayIsFinishedFromTheTruth(t *testing.T) {
	s := farms(10)
	b, k := installed(t, s, Options{})
	// Something deleted one of our elements behind our back: the last
	// transaction of the next change (deleting f4's old schedule) fails
	// with ENOENT and the fake rolls it back. The Balancer reads the
	// kernel back and deletes what is really there.
	f4 := b.marks.owner[objectKey{"f4", ""}]
	sched := shardOf(f4, b.opts.markShift()).Name
	for id, e := range k.elems[sched] {
		if scheduleFarm(e.Key) == f4 {
			delete(k.elems[sched], id)
			k.gen++ // as every change to the ruleset does
			break
		}
	}
	s.Farms[4].Backends[0].State = Drain
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("Apply = %v, want it finished", err)
	}
	if got := b.State(); !reflect.DeepEqual(sortedState(got), sortedState(s)) {
		t.Errorf("State after the change differs from it")
	}
	_, fresh := installed(t, s, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Error(diff)
	}
}

func TestStateUnknownThatCommittedStillCutsConnections(t *testing.T) {
	k := newFakeKernel()
	var flushed []uint32
	b := openFake(t, k, Options{FlushConntrack: true}, &flushed)
	s := farms(3)
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	mark := b.marks.owner[objectKey{"f1", "app0"}]
	s.Farms[1].Backends[0].State = Down
	k.failNext, k.committedAnyway = fmt.Errorf("%w: %w", nft.ErrStateUnknown, syscall.ENOBUFS), true
	res, err := b.Apply(context.Background(), s)
	if err != nil {
		t.Fatalf("Apply after a committed ENOBUFS = %v, want success", err)
	}
	if !slices.Equal(flushed, []uint32{mark}) || !slices.Equal(res.FlushedConntrack, []string{"f1/app0"}) {
		t.Errorf("flushed %v (%v), want [%#x]", flushed, res.FlushedConntrack, mark)
	}
	// And when it did not commit, Apply sends it again.
	s.Farms[2].Backends[0].Weight = 9
	k.failNext = fmt.Errorf("%w: %w", nft.ErrStateUnknown, syscall.ENOBUFS)
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("Apply after an uncommitted ENOBUFS = %v, want success on the retry", err)
	}
	_, fresh := installed(t, s, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Error(diff)
	}
}

func TestAdoptionRoundTrip(t *testing.T) {
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
	a, k := installed(t, s, Options{})
	n := len(k.commits)
	b := openFake(t, k, Options{}, nil)
	if !reflect.DeepEqual(a.marks.owner, b.marks.owner) {
		t.Errorf("marks read back = %v, want %v", b.marks.owner, a.marks.owner)
	}
	if got, want := b.State(), sortedState(s); !reflect.DeepEqual(got, want) {
		t.Errorf("state read back differs\ngot:  %+v\nwant: %+v", got, want)
	}
	if _, err := b.Apply(context.Background(), s); err != nil || len(k.commits) != n {
		t.Errorf("re-applying the adopted state sent %d commits (err %v), want none", len(k.commits)-n, err)
	}
}

func TestOrphansAreDeletedAndTheirMarksNeverReused(t *testing.T) {
	s := farms(2)
	_, k := installed(t, s, Options{MarkMask: 0xf})
	// A foreign backend record at the mark a new backend would take.
	probe := newMarkTable(Options{MarkMask: 0xf}.withDefaults())
	want := probe.home(objectKey{"f0", "new"})
	taken := false
	for _, e := range k.elems[setBackends.Name] {
		if nft.ParseMark(e.Key) == want {
			taken = true
		}
	}
	if !taken {
		orphan := nft.Element{Key: nft.Mark(want), Comment: "backend=ghost/x weight=1 state=up"}
		k.elems[setBackends.Name][elementID(orphan)] = orphan
		k.elems[setTraffic.Name][elementID(orphan)] = nft.Element{Key: nft.Mark(want)}
	}
	b := openFake(t, k, Options{MarkMask: 0xf}, nil)
	s.Farms[0].Backends = append(s.Farms[0].Backends, Backend{Name: "new", Address: addr("203.0.113.9"), Weight: 1})
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatalf("adding a backend next to an orphan: %v", err)
	}
	if m := b.marks.owner[objectKey{"f0", "new"}]; m == want {
		t.Errorf("new backend took mark %#x, held by an orphan", m)
	}
	_, fresh := installed(t, State{Farms: b.State().Farms}, Options{MarkMask: 0xf})
	if len(k.elems[setBackends.Name]) != len(fresh.elems[setBackends.Name]) {
		t.Errorf("orphan not deleted: %d backend records, want %d", len(k.elems[setBackends.Name]), len(fresh.elems[setBackends.Name]))
	}
}

func TestStatusReadsCounters(t *testing.T) {
	s := farms(2)
	b, k := installed(t, s, Options{})
	m := b.marks.owner[objectKey{"f1", "app1"}]
	k.count(setDNAT4, nft.Mark(m), 3)
	st, err := b.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Farms[1].Backends[1].Connections; got != 3 {
		t.Errorf("f1/app1 connections = %d, want 3", got)
	}
	if st.Farms[1].Connections != 3 || st.Farms[0].Connections != 0 {
		t.Errorf("farm totals %d, %d; want 0, 3", st.Farms[0].Connections, st.Farms[1].Connections)
	}
}

func TestPlanShowsWhatApplyWouldSend(t *testing.T) {
	s := farms(20)
	b, k := installed(t, s, Options{})
	n := len(k.commits)
	s.Farms[3].Backends[0].Weight = 4
	s.Farms = slices.Delete(s.Farms, 7, 8)
	s.Farms = append(s.Farms, validFarm("new", "198.51.100.201"))
	p, err := b.Plan(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.commits) != n {
		t.Fatal("Plan sent something")
	}
	if !slices.Equal(p.Added, []string{"new"}) || !slices.Equal(p.Changed, []string{"f3"}) || !slices.Equal(p.Removed, []string{"f7"}) {
		t.Errorf("plan: added %v, changed %v, removed %v", p.Added, p.Changed, p.Removed)
	}
	text := p.String()
	for _, want := range []string{
		"add element inet l4nft dnat4 {",
		`comment "backend=new/app0 weight=1 state=up"`,
		"delete element inet l4nft services4 {",
		`198.51.100.7 . tcp . 1007 comment "farm=f7"`,
		" : 203.0.113.10 . 443",
		`comment "backend=f3/app0 weight=4 state=up"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("plan text lacks %q:\n%s", want, text)
		}
	}
	res, err := b.Apply(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if res.Transactions != p.Transactions || res.Messages != p.Messages || res.Elements != p.Elements {
		t.Errorf("Apply sent %d/%d/%d, Plan said %d/%d/%d", res.Transactions, res.Messages, res.Elements, p.Transactions, p.Messages, p.Elements)
	}
	if p, _ := b.Plan(context.Background(), s); !p.Empty() {
		t.Errorf("plan after Apply is not empty:\n%s", p)
	}
}

func TestFlushedChainIsNoticedAndRebuilt(t *testing.T) {
	s := farms(5)
	b, k := installed(t, s, Options{})
	k.rules[chainChoose] = nil // nft flush chain inet l4nft choose_backend
	k.gen++
	if read, err := b.Refresh(context.Background()); err != nil || !read {
		t.Fatalf("Refresh after a foreign change = %v, %v; want a read-back", read, err)
	}
	res, err := b.Apply(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Rebuilt {
		t.Errorf("Apply after a flushed chain did not rebuild: %+v", res)
	}
	if got := len(k.rules[chainChoose]); got != len(baseChains(b.opts)[0].rules) {
		t.Errorf("choose chain has %d rules after the repair", got)
	}
}

func TestStateFileSkipsTheReadBackWhileNothingChanged(t *testing.T) {
	file := t.TempDir() + "/state.json"
	o := Options{StateFile: file}
	s := farms(30)
	b, k := installed(t, s, o)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	reads := func(b *Balancer) State { return b.State() }
	// Nothing changed: the file is trusted. Prove it by hiding the
	// kernel's elements from the read-back: the state is still right.
	hidden := k.elems
	k.elems = map[string]map[string]nft.Element{}
	b2 := openFake(t, k, o, nil)
	k.elems = hidden
	if got := reads(b2); !reflect.DeepEqual(sortedState(got), sortedState(s)) {
		t.Fatalf("state from the file differs")
	}
	n := len(k.commits)
	if res, err := b2.Apply(context.Background(), s); err != nil || res.Changed || len(k.commits) != n {
		t.Errorf("re-apply after adopting the file: %+v, %v", res, err)
	}
	s.Farms[3].Backends[1].Weight = 7
	if _, err := b2.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	_, fresh := installed(t, s, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Error(diff)
	}
	b2.Close()
	// Someone else changed the ruleset since: the file is not trusted.
	k.gen++
	delete(k.elems[setTraffic.Name], func() string {
		for id := range k.elems[setTraffic.Name] {
			return id
		}
		return ""
	}())
	b3 := openFake(t, k, o, nil)
	if _, err := b3.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if diff := compareKernels(k, fresh); diff != "" {
		t.Errorf("after a foreign change and a fresh Open: %s", diff)
	}
}

func TestPriorityPicksTheBestAvailable(t *testing.T) {
	f := validFarm("web", "198.51.100.1")
	f.Backends = append(f.Backends, Backend{Name: "backup", Address: addr("203.0.113.12"), Port: 443, Weight: 1, Priority: 2})
	scheduled := func(f Farm) []string {
		c := compileFarm(f, markMap{}, 0xffffff00, true)
		var names []string
		for _, e := range c.elements.schedule() {
			if e.Comment != "" {
				names = append(names, e.Comment)
			}
		}
		slices.Sort(names)
		return names
	}
	if got := scheduled(f); !slices.Equal(got, []string{"web/app0", "web/app1"}) {
		t.Errorf("all up: scheduled %v", got)
	}
	f.Backends[0].State, f.Backends[1].State = Down, Drain
	if got := scheduled(f); !slices.Equal(got, []string{"web/backup"}) {
		t.Errorf("priority 1 unavailable: scheduled %v", got)
	}
	f.Backends[0].State = Up
	if got := scheduled(f); !slices.Equal(got, []string{"web/app0"}) {
		t.Errorf("app0 back: scheduled %v", got)
	}
	// It reads back.
	s := State{Farms: []Farm{f}}
	_, k := installed(t, s, Options{})
	if got := openFake(t, k, Options{}, nil).State(); !reflect.DeepEqual(got, sortedState(s)) {
		t.Errorf("read back %+v", got)
	}
	f.Backends[2].Priority = 10
	if err := Validate(State{Farms: []Farm{f}}, Options{}); err == nil || !strings.Contains(err.Error(), "backends[backup].priority: 10 is outside 1-9") {
		t.Errorf("Validate(priority 10) = %v", err)
	}
}

func TestDeletedServiceIsRepairedWithTheSameBackendMarks(t *testing.T) {
	s := farms(5)
	b, k := installed(t, s, Options{})
	before := b.marks.owner[objectKey{"f2", "app1"}]
	f2 := b.marks.owner[objectKey{"f2", ""}]
	for id, e := range k.elems[setServices4.Name] {
		if nft.ParseMark(e.Value) == f2 {
			delete(k.elems[setServices4.Name], id)
		}
	}
	k.gen++
	if _, err := b.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Apply(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if got := b.marks.owner[objectKey{"f2", "app1"}]; got != before {
		t.Errorf("backend mark changed from %#x to %#x by the repair", before, got)
	}
	_, fresh := installed(t, s, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Error(diff)
	}
}
