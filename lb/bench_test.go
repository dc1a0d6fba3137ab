package lb

import "testing"

// The control plane's own cost, without the kernel: what Apply spends
// before and around the netlink transaction at 10,000 farms.

func BenchmarkValidate10kFarms(b *testing.B) {
	s := farms(10000)
	for b.Loop() {
		if err := Validate(s, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanInstall10kFarms(b *testing.B) {
	s := farms(10000)
	for b.Loop() {
		bl := &Balancer{opts: Options{}.withDefaults()}
		bl.reset()
		if _, err := bl.plan(s.Farms, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlanUnchanged10kFarms(b *testing.B) {
	s := farms(10000)
	bl, _ := installed(b, s, Options{})
	for b.Loop() {
		if p, _ := bl.plan(s.Farms, nil); !p.empty() {
			b.Fatal("unchanged state planned a change")
		}
	}
}

func BenchmarkPlanOneWeight10kFarms(b *testing.B) {
	s := farms(10000)
	bl, _ := installed(b, s, Options{})
	s.Farms[5000].Backends[0].Weight = 7
	for b.Loop() {
		if p, _ := bl.plan(s.Farms[5000:5001], nil); p.empty() {
			b.Fatal("no change planned")
		}
	}
}
