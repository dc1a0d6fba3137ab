package integration_test

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// availability is the set of backends of a farm that take new
// connections, from the moment a change committed.
type availability struct {
	at        time.Time
	available map[string]bool
}

// TestNoConnectionLostToChangesUnderLoad makes 1,000 mixed changes
// (weights, drain and up, backends added and removed, whole farms added
// and removed, through Apply, SetFarm and RemoveFarm) while eight clients
// connect to two farms without pause. Every connection must succeed, and
// none may reach a backend that was unavailable for the whole time the
// connection was being made. It runs with default farms (elements only),
// and with farms whose options give them chains of their own, which every
// change of their schedules replaces (a hash farm with persistence), or
// whose Maglev table changes in place (a consistent farm with an allow
// list and limits).
func TestNoConnectionLostToChangesUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		options func(web, api *lb.Farm)
	}{
		{"default farms", func(*lb.Farm, *lb.Farm) {}},
		{"farms with chains", func(web, api *lb.Farm) {
			web.Scheduler, web.HashFields = lb.Hash, []lb.HashField{lb.SrcIP, lb.SrcPort}
			web.Persistence = &lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(time.Minute)}
			api.Scheduler = lb.Consistent
			api.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
			api.Limits = &lb.Limits{NewPerSecond: 1_000_000}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { changesUnderLoad(t, tc.options) })
	}
}

func changesUnderLoad(t *testing.T, options func(web, api *lb.Farm)) {
	const changes = 1000
	bed := mustBed(t, testbed.Options{Backends: 4, Ports: []uint16{80, 81}})
	b := mustOpen(t, bed, lb.Options{})
	all := backendsOf(bed, false, 0, 1, 1, 1, 1)
	web := farm("web", vip4, 80, lb.NAT, slices.Clone(all[:2]))
	api := farm("api", vip4, 81, lb.DNAT, slices.Clone(all[2:]))
	options(&web, &api)
	mustApply(t, b, lb.State{Farms: []lb.Farm{web, api}})

	var mu sync.Mutex
	timeline := map[string][]availability{}
	// record notes a change to f made between before and after: while it
	// is being made, the backends available before or after may take a
	// connection; from after on, only those available after.
	record := func(f lb.Farm, before, after time.Time) {
		mu.Lock()
		defer mu.Unlock()
		tl := timeline[f.Name]
		now := map[string]bool{}
		for _, be := range f.Backends {
			if be.State == lb.Up {
				now[be.Name] = true
			}
		}
		if len(tl) > 0 {
			either := map[string]bool{}
			for name := range tl[len(tl)-1].available {
				either[name] = true
			}
			for name := range now {
				either[name] = true
			}
			tl = append(tl, availability{before, either})
		}
		timeline[f.Name] = append(tl, availability{after, now})
	}
	start := time.Now()
	record(web, start, start)
	record(api, start, start)

	ctx, cancel := context.WithTimeout(testContext(t), 2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	type reply struct {
		farm, backend string
		t0, t1        time.Time
		err           error
	}
	results := make(chan []reply, 8)
	for i := range 8 {
		go func() {
			var out []reply
			target := map[bool]struct {
				name string
				port uint16
			}{false: {"web", 80}, true: {"api", 81}}[i%2 == 1]
			for n := 0; n < 20000; n++ { // bounded in count as well as time
				select {
				case <-stop:
					results <- out
					return
				default:
				}
				t0 := time.Now()
				r, err := bed.Clients[0].Ask(ctx, "tcp", ap(vip4, target.port))
				out = append(out, reply{target.name, r.Backend, t0, time.Now(), err})
			}
			results <- out
		}()
	}

	rng := rand.New(rand.NewPCG(1, 2))
	apply := func(f lb.Farm, via int) {
		t.Helper()
		before := time.Now()
		var err error
		switch via {
		case 0:
			_, err = b.SetFarm(ctx, f)
		default:
			s := b.State()
			for i := range s.Farms {
				if s.Farms[i].Name == f.Name {
					s.Farms[i] = f
				}
			}
			_, err = b.Apply(ctx, s)
		}
		if err != nil {
			t.Fatalf("change failed: %v", err)
		}
		record(f, before, time.Now())
	}
	extra := false
	for i := range changes {
		// Paced so that the load runs through many changes; a change
		// itself takes well under a millisecond.
		time.Sleep(2 * time.Millisecond)
		f := &web
		if i%2 == 1 {
			f = &api
		}
		switch k := rng.IntN(6); {
		case k == 0: // weight
			f.Backends[rng.IntN(len(f.Backends))].Weight = 1 + rng.IntN(10)
		case k == 1 || k == 2: // drain or down one, up another
			j := rng.IntN(len(f.Backends))
			f.Backends[j].State = lb.BackendState(1 + rng.IntN(2)) // drain or down
			f.Backends[(j+1)%len(f.Backends)].State = lb.Up
		case k == 3 && len(f.Backends) < 3: // add a backend
			for _, be := range all {
				if !slices.ContainsFunc(f.Backends, func(x lb.Backend) bool { return x.Name == be.Name }) {
					f.Backends = append(f.Backends, be)
					break
				}
			}
		case k == 4 && len(f.Backends) > 1: // remove one
			f.Backends = slices.Delete(slices.Clone(f.Backends), 0, 1)
		case k == 5: // a farm nobody connects to comes or goes
			if extra {
				if _, err := b.RemoveFarm(ctx, "extra"); err != nil {
					t.Fatal(err)
				}
			} else if _, err := b.SetFarm(ctx, farm("extra", vip4, 82, lb.NAT, all[1:3])); err != nil {
				t.Fatal(err)
			}
			extra = !extra
			continue
		}
		// Keep one backend available: the farm must keep serving.
		if !slices.ContainsFunc(f.Backends, func(x lb.Backend) bool { return x.State == lb.Up }) {
			f.Backends[0].State = lb.Up
		}
		f.Backends = slices.Clone(f.Backends)
		apply(*f, i%3)
	}
	close(stop)
	var replies []reply
	for range 8 {
		replies = append(replies, <-results...)
	}
	t.Logf("%d changes in %v with %d connections made meanwhile", changes, time.Since(start), len(replies))
	if len(replies) < 1000 {
		t.Errorf("only %d connections were made during the changes: the load did not run", len(replies))
	}
	failed, wrong := 0, 0
	for _, r := range replies {
		if r.err != nil {
			if failed++; failed <= 5 {
				t.Errorf("connection to %s failed: %v", r.farm, r.err)
			}
			continue
		}
		// Availability in force at some instant while it was made.
		tl := timeline[r.farm]
		ok := false
		for j, a := range tl {
			next := time.Now()
			if j+1 < len(tl) {
				next = tl[j+1].at
			}
			if a.at.Before(r.t1) && next.After(r.t0) && a.available[r.backend] {
				ok = true
				break
			}
		}
		if !ok {
			if wrong++; wrong <= 5 {
				t.Errorf("connection to %s reached %s, unavailable from %v to %v", r.farm, r.backend, r.t0.Sub(start), r.t1.Sub(start))
			}
		}
	}
	if failed > 0 || wrong > 0 {
		t.Errorf("%d of %d connections failed and %d reached an unavailable backend", failed, len(replies), wrong)
	}
}
