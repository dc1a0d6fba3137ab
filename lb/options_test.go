package lb

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// optionFarms returns one farm per farm option, each on its own port.
func optionFarms() []Farm {
	var out []Farm
	add := func(name string, change func(*Farm)) {
		f := validFarm(name, "198.51.100.1")
		f.Ports = []PortRange{Port(uint16(1000 + len(out)))}
		change(&f)
		out = append(out, f)
	}
	add("rr", func(f *Farm) { f.Scheduler = RoundRobin })
	add("hash", func(f *Farm) { f.Scheduler = Hash; f.HashFields = []HashField{SrcPort, SrcIP} })
	add("sym", func(f *Farm) { f.Scheduler = SymHash })
	add("maglev", func(f *Farm) { f.Scheduler = Consistent; f.Slots = 1000 })
	add("sticky", func(f *Farm) {
		f.Persistence = &Persistence{By: PersistSrcIPPort, TTL: Duration(5 * time.Minute)}
	})
	add("limited", func(f *Farm) {
		f.Limits = &Limits{NewPerSecond: 100, Burst: 10, NewPerClientPerSecond: 5, EstablishedPerClient: 10, Action: Drop}
	})
	add("strict", func(f *Farm) { f.TCPStrict = true; f.Ports = append(f.Ports, PortRange{2000, 2010}) })
	add("lists", func(f *Farm) {
		f.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("0.0.0.0/0")}
		f.Deny = []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("255.255.255.0/24")}
	})
	add("ftp", func(f *Farm) { f.Helpers = []Helper{FTP} })
	add("capped", func(f *Farm) { f.Backends[0].MaxConnections = 5 })
	v6 := validFarm("v6", "2001:db8:f::1")
	v6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Weight: 1}, {Name: "b", Address: addr("2001:db8:b::11"), Weight: 3}}
	v6.Scheduler = Consistent
	v6.Persistence = &Persistence{TTL: Duration(time.Hour)}
	v6.Deny = []netip.Prefix{netip.MustParsePrefix("2001:db8:c::/48"), netip.MustParsePrefix("ffff::/16")}
	v6.TCPStrict = true
	return append(out, v6)
}

// Every option is read back from the table by a new Balancer, which then
// has nothing to change; lists come back as the prefixes that cover the
// same addresses.
func TestEveryOptionIsAdopted(t *testing.T) {
	s := State{Farms: optionFarms()}
	a, k := installed(t, s, Options{})
	n := len(k.commits)
	b := openFake(t, k, Options{}, nil)
	if !reflect.DeepEqual(a.marks.owner, b.marks.owner) {
		t.Errorf("marks read back = %v, want %v", b.marks.owner, a.marks.owner)
	}
	got := b.State()
	for i, want := range sortedState(s).Farms {
		g := got.Farms[i]
		// Lists come back merged: 0.0.0.0/0 covers 192.0.2.0/24.
		if g.Name == "lists" {
			want.Allow = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
			want.Deny = []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("255.255.255.0/24")}
		}
		if !reflect.DeepEqual(g, want) {
			t.Errorf("farm %s read back differs\ngot:  %+v\nwant: %+v", want.Name, g, want)
		}
	}
	for _, c := range b.farms {
		if c.dirty {
			t.Errorf("farm %s was read back dirty", c.spec.Name)
		}
	}
	if _, err := b.Apply(context.Background(), s); err != nil || len(k.commits) != n {
		t.Errorf("re-applying the adopted state sent %d commits (err %v), want none", len(k.commits)-n, err)
		for _, c := range k.commits[n:] {
			for _, op := range c.Ops() {
				t.Logf("%v %s %s %d", op.Verb, op.Set.Name, op.Chain.Name, len(op.Elements))
			}
		}
	}
}

// Each option, added to a farm, removed, and changed, leaves the kernel as
// a fresh install of the same state leaves it, and farm chains are never
// left behind.
func TestOptionChangesMatchAFreshInstall(t *testing.T) {
	base := State{Farms: []Farm{validFarm("web", "198.51.100.1")}}
	b, k := installed(t, base, Options{})
	for _, f := range optionFarms() {
		f.Name, f.Address, f.Ports = "web", addr("198.51.100.1"), []PortRange{Port(443)}
		if f.Address.Is4() != strings.HasPrefix(f.Backends[0].Address.String(), "203.") {
			continue // the IPv6 farm
		}
		for _, s := range []State{{Farms: []Farm{f}}, base} {
			if _, err := b.Apply(context.Background(), s); err != nil {
				t.Fatalf("%+v: %v", f, err)
			}
			_, fresh := installed(t, s, Options{})
			if diff := compareKernels(k, fresh); diff != "" {
				t.Errorf("after applying %+v: %s", s.Farms[0], diff)
			}
			if got, want := farmChainsOf(k), farmChainsOf(fresh); len(got) != len(want) {
				t.Errorf("after applying %+v: farm chains %v, a fresh install has %v", s.Farms[0], got, want)
			}
		}
	}
}

func farmChainsOf(k *fakeKernel) []string {
	var out []string
	for name := range k.rules {
		if strings.HasPrefix(name, farmChainPrefix) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// A consistent farm's change of backends rewrites only the table slots
// that change, in place, under the same farm mark.
func TestConsistentChangeRewritesOnlyChangedSlots(t *testing.T) {
	f := validFarm("maglev", "198.51.100.1")
	f.Scheduler = Consistent
	for i := range 8 {
		f.Backends = append(f.Backends, Backend{Name: "b" + string(rune('a'+i)), Address: netip.AddrFrom4([4]byte{203, 0, 113, byte(20 + i)}), Weight: 1})
	}
	b, k := installed(t, State{Farms: []Farm{f}}, Options{})
	farmMark := b.marks.owner[objectKey{f.Name, ""}]
	n := len(k.commits)
	m := maglevSize(len(f.Backends), 0)
	f.Backends[3].State = Drain
	if _, err := b.Apply(context.Background(), State{Farms: []Farm{f}}); err != nil {
		t.Fatal(err)
	}
	if b.marks.owner[objectKey{f.Name, ""}] != farmMark {
		t.Errorf("draining a backend of a consistent farm renewed its farm mark")
	}
	_, _, elements := sent(k, n)
	// Each slot that moves is deleted and added: about 2·m/10 of 10 backends.
	if limit := 2 * (m/len(f.Backends) + m/50); elements > limit {
		t.Errorf("draining 1 of %d backends sent %d elements, want at most %d (table of %d)", len(f.Backends), elements, limit, m)
	}
}

// Options are checked, naming the field.
func TestOptionProblems(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Farm)
		want   string
	}{
		{"hash fields without hash", func(f *Farm) { f.HashFields = []HashField{SrcIP} }, "hash_fields: apply to the hash and consistent schedulers only"},
		{"field twice", func(f *Farm) { f.Scheduler = Hash; f.HashFields = []HashField{SrcIP, SrcIP} }, "hash_fields[1]: src_ip is listed twice"},
		{"slots without consistent", func(f *Farm) { f.Slots = 1000 }, "slots: applies to the consistent scheduler only"},
		{"too few slots", func(f *Farm) { f.Scheduler = Consistent; f.Slots = 150 }, "slots: 150 is fewer than 100 per backend"},
		{"ttl", func(f *Farm) { f.Persistence = &Persistence{TTL: Duration(time.Millisecond)} }, "persistence.ttl: 1ms is outside 1s-24h0m0s"},
		{"negative limit", func(f *Farm) { f.Limits = &Limits{NewPerSecond: -1} }, "limits.new_per_second: -1 is outside"},
		{"burst alone", func(f *Farm) { f.Limits = &Limits{Burst: 5} }, "limits.burst: applies to new_per_second"},
		{"prefix family", func(f *Farm) { f.Deny = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")} }, "deny[0]: 2001:db8::/32 is not of the same family"},
		{"helper twice", func(f *Farm) { f.Helpers = []Helper{FTP, FTP} }, "helpers[1]: ftp is listed twice"},
		{"helper of udp", func(f *Farm) { f.Helpers = []Helper{TFTP} }, "helpers[0]: the tftp helper follows no tcp connection"},
		{"round robin cycle", func(f *Farm) {
			f.Scheduler = RoundRobin
			f.Backends = []Backend{{Name: "a", Address: addr("203.0.113.1"), Weight: 9999}, {Name: "b", Address: addr("203.0.113.2"), Weight: 9998}}
			for i := range 8 {
				f.Backends = append(f.Backends, Backend{Name: "c" + string(rune('a'+i)), Address: addr("203.0.113.3"), Weight: 9997 - i})
			}
		}, "a round robin cycle over these weights is"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := validFarm("web", "198.51.100.1")
			tc.change(&f)
			err := Validate(State{Farms: []Farm{f}}, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want a problem containing %q", err, tc.want)
			}
		})
	}
}

// Lists merge into disjoint ranges and read back as covering prefixes.
func TestListRangesRoundTrip(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("192.0.2.0/25"), netip.MustParsePrefix("192.0.2.128/25"),
		netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("255.255.255.255/32"),
	}
	es := listElements(0x1200, in, func(string, ...any) string { return "" })
	if len(es) != 6 {
		t.Fatalf("3 ranges gave %d elements, want 6", len(es))
	}
	got := listPrefixes(es)
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("255.255.255.255/32")}
	if !slices.Equal(got, want) {
		t.Errorf("read back %v, want %v", got, want)
	}
	if r := rangePrefixes(addr("192.0.2.1"), addr("192.0.2.6")); len(r) != 4 || r[1] != netip.MustParsePrefix("192.0.2.2/31") {
		t.Errorf("192.0.2.1-192.0.2.6 = %v, want .1/32 .2/31 .4/31 .6/32", r)
	}
}
