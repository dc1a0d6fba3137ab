package lb

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// validFarm returns a farm that passes validation; tests break one field.
func validFarm(name, vip string) Farm {
	return Farm{
		Name: name, Address: addr(vip), Ports: []PortRange{Port(443)},
		Backends: []Backend{
			{Name: "app0", Address: addr("203.0.113.10"), Port: 443, Weight: 1},
			{Name: "app1", Address: addr("203.0.113.11"), Port: 443, Weight: 2},
		},
	}
}

func TestValidateAcceptsValidState(t *testing.T) {
	v6 := validFarm("v6", "2001:db8:f::1")
	v6.Backends = []Backend{{Name: "a", Address: addr("2001:db8:b::10"), Weight: 1}}
	s := State{Farms: []Farm{validFarm("web", "198.51.100.250"), v6}}
	s.Farms[0].Ports = append(s.Farms[0].Ports, PortRange{8000, 8010})
	if err := Validate(s, Options{}); err != nil {
		t.Fatalf("Validate() = %v, want nil", err)
	}
}

func TestValidateNamesFieldOfEveryProblem(t *testing.T) {
	tests := []struct {
		name   string
		change func(s *State)
		opts   Options
		want   string // the problem's path and part of its message
	}{
		{"bad farm name", func(s *State) { s.Farms[0].Name = "we b" }, Options{}, "farms[we b].name:"},
		{"duplicate farm", func(s *State) { s.Farms[1].Name = "web" }, Options{}, "farms[web].name: duplicate farm name"},
		{"missing address", func(s *State) { s.Farms[0].Address = netip.Addr{} }, Options{}, "farms[web].address: missing"},
		{"unspecified address", func(s *State) { s.Farms[0].Address = addr("0.0.0.0") }, Options{}, "farms[web].address: 0.0.0.0 is not a usable"},
		{"no ports", func(s *State) { s.Farms[0].Ports = nil }, Options{}, "farms[web].ports: at least one"},
		{"port 0", func(s *State) { s.Farms[0].Ports = []PortRange{Port(0)} }, Options{}, "farms[web].ports[0]: port 0"},
		{"backwards range", func(s *State) { s.Farms[0].Ports = []PortRange{{9000, 8000}} }, Options{}, "farms[web].ports[0]: range 9000-8000 ends before"},
		{"overlapping ranges", func(s *State) { s.Farms[0].Ports = []PortRange{{8000, 8010}, Port(8005)} }, Options{}, "farms[web].ports[1]: 8005 overlaps"},
		{"bad protocol", func(s *State) { s.Farms[0].Protocol = 9 }, Options{}, "farms[web].protocol:"},
		{"bad mode", func(s *State) { s.Farms[0].Mode = 9 }, Options{}, "farms[web].mode:"},
		{"source in dnat", func(s *State) { s.Farms[0].Mode = DNAT; s.Farms[0].Source = addr("198.51.100.250") }, Options{}, "farms[web].source: dnat mode"},
		{"source family", func(s *State) { s.Farms[0].Source = addr("2001:db8::1") }, Options{}, "farms[web].source: 2001:db8::1 is not of the same family"},
		{"mixed family backend", func(s *State) { s.Farms[0].Backends[1].Address = addr("2001:db8:b::11") }, Options{}, "farms[web].backends[app1].address: 2001:db8:b::11 is not of the same family"},
		{"weight 0", func(s *State) { s.Farms[0].Backends[0].Weight = 0 }, Options{}, "farms[web].backends[app0].weight: 0 is not a weight"},
		{"weight too big", func(s *State) { s.Farms[0].Backends[0].Weight = MaxWeight + 1 }, Options{}, "farms[web].backends[app0].weight: 10001 is outside"},
		{"duplicate backend", func(s *State) { s.Farms[0].Backends[1].Name = "app0" }, Options{}, "farms[web].backends[app0].name: duplicate backend"},
		{"bad state", func(s *State) { s.Farms[0].Backends[0].State = 7 }, Options{}, "farms[web].backends[app0].state:"},
		{"duplicate backend in a large farm", func(s *State) {
			for i := range 100 {
				s.Farms[0].Backends = append(s.Farms[0].Backends, Backend{Name: fmt.Sprintf("b%d", i), Address: addr("203.0.113.20"), Weight: 1})
			}
			s.Farms[0].Backends[90].Name = "app1"
		}, Options{}, "farms[web].backends[app1].name: duplicate backend name (also backends[1])"},
		{"two ranges overlap across farms", func(s *State) {
			s.Farms[1].Address = s.Farms[0].Address
			s.Farms[0].Ports = []PortRange{{400, 500}}
			s.Farms[1].Ports = []PortRange{{450, 460}}
		}, Options{}, `farms[api].ports: 198.51.100.250 tcp port 450-460 is already served by farm "web" (farms[0]) port 400-500`},
		{"same service twice", func(s *State) { s.Farms[1].Address = s.Farms[0].Address }, Options{}, `farms[api].ports: 198.51.100.250 tcp port 443 is already served by farm "web"`},
		{"overlapping range across farms", func(s *State) {
			s.Farms[1].Address = s.Farms[0].Address
			s.Farms[0].Ports = []PortRange{{400, 500}}
		}, Options{}, `farms[api].ports: 198.51.100.250 tcp port 443 is already served by farm "web" (farms[0]) port 400-500`},
		{"too many marks", func(s *State) {}, Options{MarkMask: 0x3}, "farms: 2 farms (0 with options that need an id) and 4 backends need a mark each and one spare, but mark mask 0x00000003 has only 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := State{Farms: []Farm{validFarm("web", "198.51.100.250"), validFarm("api", "198.51.100.251")}}
			tt.change(&s)
			err := Validate(s, tt.opts)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want an error matching ErrInvalid", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %T, want *ValidationError", err)
			}
			for _, p := range ve.Problems {
				if strings.Contains(p.String(), tt.want) {
					return
				}
			}
			t.Errorf("no problem contains %q; got:\n%v", tt.want, err)
		})
	}
}

func TestValidateReportsAllProblemsAtOnce(t *testing.T) {
	s := State{Farms: []Farm{validFarm("web", "198.51.100.250")}}
	s.Farms[0].Ports = []PortRange{Port(0)}
	s.Farms[0].Backends[0].Weight = 0
	s.Farms[0].Backends[1].Address = netip.Addr{}
	var ve *ValidationError
	if !errors.As(Validate(s, Options{}), &ve) {
		t.Fatal("Validate() returned no *ValidationError")
	}
	if len(ve.Problems) != 3 {
		t.Errorf("got %d problems, want 3: %v", len(ve.Problems), ve)
	}
	for _, p := range ve.Problems {
		if p.FarmIndex != 0 {
			t.Errorf("problem %q: FarmIndex = %d, want 0", p, p.FarmIndex)
		}
	}
}

func TestOptionsRejectNonContiguousMask(t *testing.T) {
	for _, m := range []uint32{0x00f0f000, 0x80000001} {
		if err := (Options{MarkMask: m}).withDefaults().check(); !errors.Is(err, ErrInvalid) {
			t.Errorf("mask %#x: check() = %v, want ErrInvalid", m, err)
		}
	}
	if got := (Options{MarkMask: 0x00ff0000}).MaxMarks(); got != 255 {
		t.Errorf("MaxMarks() = %d, want 255", got)
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{"443", Port(443), ""},
		{"8000-8010", PortRange{8000, 8010}, ""},
		{"0", PortRange{}, "outside 1-65535"},
		{"65536", PortRange{}, "outside 1-65535"},
		{"10-5", PortRange{}, "ends before it starts"},
		{"http", PortRange{}, "not a number"},
	}
	for _, tt := range tests {
		got, err := ParsePortRange(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParsePortRange(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestProblemJSONRoundTrip(t *testing.T) {
	for _, p := range []Problem{
		{File: "f.yaml", Line: 3, Farm: "web", FarmIndex: 4, Backend: "a", BackendIndex: 1, Field: "weight", Message: "bad"},
		NewProblem("mark_mask", "not contiguous"),
		{Farm: "web", FarmIndex: 2, BackendIndex: -1, Field: "ports", Message: "clash"},
	} {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var got Problem
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if got.String() != p.String() {
			t.Errorf("%s read back as %s (%s)", p, got, b)
		}
	}
}
