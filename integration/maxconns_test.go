package integration_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// A backend with max_connections 5 under 20 keep-alive flows holds 5 and
// the other backend takes the rest; when its flows close, it takes new
// ones again.
func TestMaxConnectionsHoldsABackendAtItsLimit(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 2})
	b := mustOpen(t, bed, lb.Options{})
	// Weighted 3:1 towards the capped backend, so that 20 flows surely
	// fill it (fewer than 5 of 20 choices falling on it: one in a million).
	f := farm("capped", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 3, 1))
	f.Backends[0].MaxConnections = 5
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	capped, other := bed.Backends[0].Name(), bed.Backends[1].Name()

	// 20 flows, 4 at a time. Once the capped backend is found full it is
	// flagged for a second, and choices that fall on it are made again at
	// once; the connection that found it full loses its first packet,
	// which the client's TCP sends again a second later.
	ctx, cancel := context.WithTimeout(testContext(t), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var conns []*testbed.Conn
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for range 20 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := bed.Clients[0].Dial(ctx, "tcp", ap(vip4, 80))
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	held := map[string]int{}
	for _, c := range conns {
		held[c.First().Backend]++
	}
	if held[capped] != 5 || held[other] != 15 {
		t.Errorf("20 keep-alive flows: %s holds %d (want its 5), %s %d (want 15)", capped, held[capped], other, held[other])
	}
	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first packets dropped for the full backend: %d", st.Farms[0].Rejected.BackendFull)
	if st.Farms[0].Rejected.BackendFull == 0 {
		t.Errorf("status counts no connection refused by the full backend")
	}
	assertSameBackends(t, "at the limit", conns)

	// Close the capped backend's flows: it takes new connections again.
	for _, c := range conns {
		if c.First().Backend == capped {
			c.Close()
		}
	}
	if err := testbed.Eventually(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		r, err := bed.Clients[0].Ask(ctx, "tcp", ap(vip4, 80))
		if err != nil || r.Backend != capped {
			return fmt.Errorf("reached %q (%v)", r.Backend, err)
		}
		return nil
	}); err != nil {
		t.Errorf("after its flows closed, %s took no new connection: %v", capped, err)
	}
}
