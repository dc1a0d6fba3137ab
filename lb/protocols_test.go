package lb

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

// allFarm returns a farm of every protocol on vip, its backends keeping
// the client's port.
func allFarm(name, vip string) Farm {
	f := validFarm(name, vip)
	f.Protocol, f.Ports = AllProtocols, nil
	for i := range f.Backends {
		f.Backends[i].Port = 0
	}
	return f
}

// TestProtocolFarmsInstallAdoptChangeRemove takes SCTP farms and farms of
// every protocol through a Balancer's life on the fake kernel: installed,
// read back by a new Balancer, changed and removed, each step checked
// element for element against a fresh install.
func TestProtocolFarmsInstallAdoptChangeRemove(t *testing.T) {
	sctp := validFarm("sig", "198.51.100.20")
	sctp.Protocol, sctp.Ports = SCTP, []PortRange{Port(2905), {3000, 3010}}
	sctp6 := validFarm("sig6", "2001:db8:f::20")
	sctp6.Protocol, sctp6.Ports = SCTP, []PortRange{Port(2905)}
	sctp6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Port: 2906, Weight: 1}}
	every6 := allFarm("any6", "2001:db8:f::30")
	every6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Weight: 1}}
	// A farm of ports and one of every protocol on one address.
	web := validFarm("web", "198.51.100.40")
	shared := allFarm("rest", "198.51.100.40")

	tests := []struct {
		name  string
		farms []Farm
		// want is, per set, how many elements the farms put there.
		want map[string]int
	}{
		{"sctp", []Farm{sctp}, map[string]int{setServices4.Name: 1, setServiceRanges4.Name: 1}},
		{"sctp ipv6", []Farm{sctp6}, map[string]int{setServices6.Name: 1}},
		{"all", []Farm{allFarm("any", "198.51.100.30")}, map[string]int{setServicesAddr4.Name: 1, setDNATAddr4.Name: 2, setDNAT4.Name: 0}},
		{"all ipv6", []Farm{every6}, map[string]int{setServicesAddr6.Name: 1, setDNATAddr6.Name: 1}},
		{"all beside a port farm", []Farm{web, shared}, map[string]int{setServices4.Name: 1, setServicesAddr4.Name: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := State{Farms: tt.farms}
			a, k := installed(t, s, Options{})
			for set, n := range tt.want {
				if got := len(k.elems[set]); got != n {
					t.Errorf("set %s has %d elements, want %d", set, got, n)
				}
			}

			// Another process adopts the table: the same state and marks,
			// and nothing to send.
			n := len(k.commits)
			b := openFake(t, k, Options{}, nil)
			if got, want := b.State(), sortedState(s); !reflect.DeepEqual(got, want) {
				t.Errorf("state read back differs\ngot:  %+v\nwant: %+v", got, want)
			}
			if !reflect.DeepEqual(a.marks.owner, b.marks.owner) {
				t.Errorf("marks read back = %v, want %v", b.marks.owner, a.marks.owner)
			}
			if _, err := b.Apply(ctx, s); err != nil || len(k.commits) != n {
				t.Errorf("re-applying the adopted state sent %d commits (err %v), want none", len(k.commits)-n, err)
			}

			// A change of weight, then of protocol: the last farm's, as
			// the port farm beside a farm of protocol all cannot become
			// one too.
			last := len(s.Farms) - 1
			s.Farms[last].Backends[0].Weight = 7
			if _, err := b.Apply(ctx, s); err != nil {
				t.Fatal(err)
			}
			assertFreshInstall(t, k, s)
			f := s.Farms[last]
			if f.Protocol == AllProtocols {
				f.Protocol, f.Ports = UDP, []PortRange{Port(53)}
			} else {
				f.Protocol, f.Ports = AllProtocols, nil
				for i := range f.Backends {
					f.Backends[i].Port = 0
				}
			}
			if _, err := b.SetFarm(ctx, f); err != nil {
				t.Fatalf("SetFarm to protocol %s: %v", f.Protocol, err)
			}
			s.Farms[last] = f
			assertFreshInstall(t, k, s)
			if got := openFake(t, k, Options{}, nil).State(); !reflect.DeepEqual(got, sortedState(s)) {
				t.Errorf("state read back after the change differs\ngot:  %+v\nwant: %+v", got, sortedState(s))
			}

			// Removed, one farm at a time.
			for len(s.Farms) > 0 {
				if _, err := b.RemoveFarm(ctx, s.Farms[0].Name); err != nil {
					t.Fatal(err)
				}
				s.Farms = s.Farms[1:]
				assertFreshInstall(t, k, s)
			}
			for _, set := range serviceSets {
				if n := len(k.elems[set.Name]); n != 0 {
					t.Errorf("set %s keeps %d elements after every farm left", set.Name, n)
				}
			}
		})
	}
}

// assertFreshInstall fails the test unless k holds what a fresh install of
// s holds.
func assertFreshInstall(t *testing.T, k *fakeKernel, s State) {
	t.Helper()
	_, fresh := installed(t, s, Options{})
	if diff := compareKernels(k, fresh); diff != "" {
		t.Errorf("the kernel differs from a fresh install: %s", diff)
	}
}

func TestProtocolsReadBackFromTheirServices(t *testing.T) {
	for p := range Protocol(len(protocols.names)) {
		if got := p.bits().protocol(); got != p {
			t.Errorf("protocol %s reads back as %s", p, got)
		}
	}
	// Services that no protocol makes read back as TCP (and the farm is
	// then dirty, repaired by the next Apply).
	if got := (protoBit(protoSCTP) | protoBit(protoTCP)).protocol(); got != TCP {
		t.Errorf("tcp and sctp services read back as %s, want tcp", got)
	}
}

func TestSetFarmChecksFarmsOfEveryProtocol(t *testing.T) {
	ctx := context.Background()
	b, k := installed(t, State{Farms: []Farm{allFarm("any", "198.51.100.30")}}, Options{})

	// A second farm of every protocol on the same address clashes, and
	// nothing is sent.
	n := len(k.commits)
	_, err := b.SetFarm(ctx, allFarm("other", "198.51.100.30"))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Field != "address" || len(k.commits) != n {
		t.Fatalf("SetFarm of a second farm of protocol all = %v, want one address problem and nothing sent", err)
	}
	if want := `farms[other].address: 198.51.100.30 protocol all is already served by farm "any"`; ve.Problems[0].String() != want {
		t.Errorf("problem = %q, want %q", ve.Problems[0], want)
	}

	// A farm of ports on the same address does not: its ports win.
	if _, err := b.SetFarm(ctx, validFarm("web", "198.51.100.30")); err != nil {
		t.Fatalf("SetFarm of a port farm on the address of a farm of protocol all: %v", err)
	}
	// Once the first leaves, the address is free.
	if _, err := b.RemoveFarm(ctx, "any"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SetFarm(ctx, allFarm("other", "198.51.100.30")); err != nil {
		t.Fatalf("SetFarm after the other farm of protocol all left: %v", err)
	}
}

func TestValidateFarmsOfNewProtocols(t *testing.T) {
	tests := []struct {
		name   string
		change func(s *State)
		want   []string // problems, whole; none for a valid state
	}{
		{"all with ports", func(s *State) { s.Farms[0].Ports = []PortRange{Port(80)} },
			[]string{"farms[any].ports: protocol all serves every port of the address; ports apply to tcp, udp, tcp+udp and sctp only"}},
		{"all with a backend port", func(s *State) { s.Farms[0].Backends[1].Port = 8080 },
			[]string{"farms[any].backends[app1].port: 8080: protocol all keeps the port the client connected to; want 0 (omitted)"}},
		{"two farms of protocol all on one address", func(s *State) {
			other := allFarm("other", "198.51.100.30")
			s.Farms = append(s.Farms, other)
		}, []string{`farms[other].address: 198.51.100.30 protocol all is already served by farm "any" (farms[0])`}},
		{"all and a port farm on one address", func(s *State) {
			s.Farms = append(s.Farms, validFarm("web", "198.51.100.30"))
		}, nil},
		{"sctp without ports", func(s *State) { s.Farms[1].Ports = nil },
			[]string{"farms[sig].ports: at least one port is required"}},
		{"sctp and tcp on one port", func(s *State) {
			web := validFarm("web", "198.51.100.20")
			web.Ports = s.Farms[1].Ports
			s.Farms = append(s.Farms, web)
		}, nil},
		{"sctp twice on one port", func(s *State) {
			again := s.Farms[1]
			again.Name = "again"
			s.Farms = append(s.Farms, again)
		}, []string{`farms[again].ports: 198.51.100.20 sctp port 2905 is already served by farm "sig" (farms[1]) port 2905`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sctp := validFarm("sig", "198.51.100.20")
			sctp.Protocol, sctp.Ports = SCTP, []PortRange{Port(2905)}
			s := State{Farms: []Farm{allFarm("any", "198.51.100.30"), sctp}}
			tt.change(&s)
			err := Validate(s, Options{})
			var got []string
			if ve := (*ValidationError)(nil); errors.As(err, &ve) {
				for _, p := range ve.Problems {
					got = append(got, p.String())
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Validate() problems = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRenderShowsProtocolsAndTheAddressMaps(t *testing.T) {
	sctp := validFarm("sig", "198.51.100.20")
	sctp.Protocol = SCTP
	every := allFarm("any", "198.51.100.20")
	every6 := allFarm("any6", "2001:db8:f::30")
	every6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Weight: 1}}
	out, err := Render(State{Farms: []Farm{sctp, every, every6}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	marks := newMarkTable(Options{}.withDefaults())
	for _, want := range []string{
		"map services_addr4 {\n\t\ttype ipv4_addr : mark\n",
		"map services_addr6 {\n\t\ttype ipv6_addr : mark\n",
		`198.51.100.20 . sctp . 443 comment "farm=sig"`,
		`198.51.100.20 comment "farm=any" : ` + markText(marks.home(objectKey{"any", ""})<<8),
		`2001:db8:f::30 comment "farm=any6"`,
		"ct mark 0x00000000 meta nfproto ipv4 ct mark set ip daddr map @services_addr4",
		"ct mark 0x00000000 meta nfproto ipv6 ct mark set ip6 daddr map @services_addr6",
		"meta l4proto { tcp, udp, sctp } dnat ip to",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Render() lacks %q", want)
		}
	}
}

// The choosing chain looks farms of every protocol up after the farms of
// ports, so that a port farm on the same address wins: the rules' lookups,
// as sent to the kernel, in order.
func TestAddressRulesFollowPortRules(t *testing.T) {
	var sets []string
	for _, r := range baseChains(Options{}.withDefaults())[0].rules {
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Lookup); ok && isService(l.SetName) {
				sets = append(sets, l.SetName)
			}
		}
	}
	var want []string
	for _, s := range serviceSets {
		want = append(want, s.Name)
	}
	if !slices.Equal(sets, want) {
		t.Errorf("choosing chain looks up %v, want %v in that order", sets, want)
	}
}
