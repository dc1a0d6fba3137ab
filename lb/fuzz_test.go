package lb

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzValidate: whatever State a caller builds, Validate does not panic;
// Apply of an invalid one sends nothing, and of a valid one installs it
// so that a second Apply sends nothing, nor one by a new Balancer that
// adopted the table.
func FuzzValidate(f *testing.F) {
	for _, s := range []State{
		farms(2),
		{Farms: []Farm{validFarm("web", "198.51.100.1"), validFarm("web", "198.51.100.1")}},
		{Farms: []Farm{{Name: "x", Address: addr("2001:db8::1"), Ports: []PortRange{{1, 65535}}}}},
		{Farms: optionFarms()},
	} {
		b, _ := json.Marshal(s)
		f.Add(b)
	}
	f.Add([]byte(`{"farms":[{"name":"a","address":"198.51.100.1","ports":["80","70-90"],"backends":[{"name":"b","address":"203.0.113.1","weight":-1,"priority":12}]}]}`))
	// A farm of every protocol and an SCTP farm on one address.
	f.Add([]byte(`{"farms":[{"name":"a","address":"198.51.100.1","protocol":"all","ports":[],"backends":[{"name":"b","address":"203.0.113.1","weight":1}]},{"name":"s","address":"198.51.100.1","protocol":"sctp","ports":["80"],"backends":[{"name":"b","address":"203.0.113.1","port":8080,"weight":1}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s State
		if json.Unmarshal(data, &s) != nil || len(s.Farms) > 20 {
			return
		}
		for _, f := range s.Farms {
			if len(f.Backends) > 20 || len(f.Ports) > 20 {
				return
			}
		}
		k := newFakeKernel()
		b := openFake(t, k, Options{}, nil)
		err := Validate(s, Options{})
		_, aerr := b.Apply(context.Background(), s)
		if err != nil {
			if !errors.Is(aerr, ErrInvalid) || len(k.commits) != 0 {
				t.Fatalf("invalid state: Apply = %v after %d commits", aerr, len(k.commits))
			}
			return
		}
		if aerr != nil {
			t.Fatalf("valid state refused: %v", aerr)
		}
		n := len(k.commits)
		if res, err := b.Apply(context.Background(), s); err != nil || res.Changed || len(k.commits) != n {
			t.Fatalf("second Apply: %+v, %v", res, err)
		}
		adopter := openFake(t, k, Options{}, nil)
		if res, err := adopter.Apply(context.Background(), s); err != nil || len(k.commits) != n {
			t.Fatalf("Apply after adoption: %+v, %v", res, err)
		}
	})
}
