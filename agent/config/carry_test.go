package config

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/l4nft/l4nft/lb"
)

// fill sets every field of the struct v points to a value other than its
// zero, and fails on a field type it does not know: a field added to
// lb.Farm or lb.Backend must be added here and, above all, carried by the
// parser and the writers, which TestEveryLBFieldIsCarried then checks.
func fill(tb testing.TB, v reflect.Value, seed int) {
	tb.Helper()
	t := v.Type()
	for i := range t.NumField() {
		f, sf := v.Field(i), t.Field(i)
		switch f.Interface().(type) {
		case string:
			f.SetString("x" + strings.Repeat("y", seed))
		case netip.Addr:
			f.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + seed)})))
		case uint16:
			f.SetUint(uint64(8000 + seed))
		case int:
			f.SetInt(int64(3 + seed))
			if sf.Name == "Slots" {
				f.SetInt(1000) // at least 100 per backend
			}
		case []lb.PortRange:
			f.Set(reflect.ValueOf([]lb.PortRange{lb.Port(80), {First: 8000, Last: 8010}}))
		case lb.Protocol:
			f.Set(reflect.ValueOf(lb.UDP))
		case lb.Mode:
			// NAT is the only mode with a source: its zero is the one
			// value that passes.
		case lb.Scheduler:
			// The one scheduler that takes both hash_fields and slots.
			f.Set(reflect.ValueOf(lb.Consistent))
		case []lb.HashField:
			// Not in canonical order: the order written is kept.
			f.Set(reflect.ValueOf([]lb.HashField{lb.DstPort, lb.SrcIP}))
		case *lb.Persistence:
			f.Set(reflect.ValueOf(&lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(90 * time.Second)}))
		case *lb.Limits:
			// Every number within lb's range, and the action that is not
			// the default.
			f.Set(reflect.ValueOf(&lb.Limits{NewPerSecond: 1000, Burst: 2000, NewPerClientPerSecond: 20, EstablishedPerClient: 50, Action: lb.Drop}))
		case bool:
			f.SetBool(true)
		case []netip.Prefix:
			// Of the farm's family (its address is IPv4), not in order,
			// one a single address, one not masked.
			switch sf.Name {
			case "Allow":
				f.Set(reflect.ValueOf([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.0.2.7/32"),
					netip.MustParsePrefix("10.1.2.3/8")}))
			default:
				f.Set(reflect.ValueOf([]netip.Prefix{netip.MustParsePrefix("203.0.113.128/25")}))
			}
		case []lb.Helper:
			// Helpers that follow udp, the farm's protocol here; not in
			// canonical order.
			f.Set(reflect.ValueOf([]lb.Helper{lb.SIP, lb.TFTP}))
		case lb.BackendState:
			f.Set(reflect.ValueOf(lb.Drain))
		case []lb.Backend:
			// carried by config.Farm.Backends
		default:
			tb.Fatalf("fill does not know field %s %s: teach it, and make sure agent/config carries it", sf.Name, sf.Type)
		}
	}
}

// TestEveryLBFieldIsCarried fails when lb.Farm or lb.Backend gains a
// field the configuration layer drops: a farm with every field set goes
// through the YAML writer and parser, the JSON writer and parser, and the
// API's JSON, and comes back the same lb.Farm.
func TestEveryLBFieldIsCarried(t *testing.T) {
	addrs := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}
	var want lb.Farm
	fill(t, reflect.ValueOf(&want).Elem(), 0)
	want.Name = "web"
	want.Mode = lb.NAT
	for i := range 2 {
		var b lb.Backend
		fill(t, reflect.ValueOf(&b).Elem(), i+1)
		b.Name = "app" + string(rune('0'+i))
		want.Backends = append(want.Backends, b)
	}
	f := Farm{Farm: want}
	f.Farm.Backends = nil
	for _, b := range want.Backends {
		f.Backends = append(f.Backends, Backend{Backend: b})
	}
	if got := f.LB(); !cmp.Equal(got, want, addrs) {
		t.Fatalf("LB() = %+v, want %+v", got, want)
	}
	for _, name := range []string{"l4nft.yaml", "l4nft.json"} {
		c := &Config{Farms: []Farm{f}}
		data, err := c.Marshal(name)
		if err != nil {
			t.Fatalf("failed to marshal for %s: %v", name, err)
		}
		back, err := ParseAndValidate(name, data)
		if err != nil {
			t.Fatalf("failed to read back %s: %v\n%s", name, err, data)
		}
		if diff := cmp.Diff(want, back.Farms[0].LB(), addrs); diff != "" {
			t.Errorf("%s round trip (-want +got):\n%s", name, diff)
		}
		for _, farmFile := range []string{"farms.d/web.yaml", "farms.d/web.json"} {
			back, err := ParseFarmFile(farmFile, f.MarshalFarmFile(farmFile))
			if err != nil {
				t.Fatalf("failed to read back %s: %v", farmFile, err)
			}
			if diff := cmp.Diff(want, back.LB(), addrs); diff != "" {
				t.Errorf("%s round trip (-want +got):\n%s", farmFile, diff)
			}
		}
	}
	// The API: a farm encoded as JSON by the agent, decoded by a client,
	// and sent back as a body.
	body, err := json.Marshal(f)
	if err != nil {
		t.Fatalf("failed to encode: %v", err)
	}
	var viaClient Farm
	if err := json.Unmarshal(body, &viaClient); err != nil {
		t.Fatalf("failed to decode: %v", err)
	}
	if !viaClient.Equal(&f) {
		t.Errorf("JSON round trip: %+v, want %+v", viaClient, f)
	}
	back, err := ParseFarm("request body", body, Limits{})
	if err != nil {
		t.Fatalf("failed to parse the body: %v\n%s", err, body)
	}
	if !back.Equal(&f) {
		t.Errorf("body round trip: %+v, want %+v", back, f)
	}
	if strings.Contains(string(body), `"Farm"`) || strings.Count(string(body), `"backends"`) != 1 {
		t.Errorf("the embedded lb.Farm shows in the JSON: %s", body)
	}
}
