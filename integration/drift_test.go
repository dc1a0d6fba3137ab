package integration_test

import (
	"context"
	"math/bits"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// Someone else breaks the table: flushes a chain, deletes an element,
// deletes the whole table. Watch reports each within a second, and Refresh
// and Apply put back exactly what is missing; traffic works again.
func TestDriftIsNoticedAndRepaired(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
	mustApply(t, b, s)
	want := listRuleset(t, bed.Balancer.Namespace)

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	var drifts atomic.Int32
	kick := make(chan struct{}, 1)
	go b.Watch(ctx, func() {
		drifts.Add(1)
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	// Our own changes are not drift.
	s.Farms[0].Backends[0].Weight = 2
	mustApply(t, b, s)
	s.Farms[0].Backends[0].Weight = 1
	mustApply(t, b, s)
	want = listRuleset(t, bed.Balancer.Namespace)

	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	mark := st.Farms[0].Backends[0].Mark
	for _, fault := range []struct {
		name    string
		nft     []string
		rebuilt bool
	}{
		{"flush chain", []string{"flush", "chain", "inet", "l4nft", "prerouting"}, true},
		// (nft 1.0.6 reads a mark key of a table made over netlink
		// byte-swapped: see the README.)
		{"delete element", []string{"delete", "element", "inet", "l4nft", "dnat4", "{ " + markHex(bits.ReverseBytes32(mark)) + " }"}, false},
		{"delete table", []string{"delete", "table", "inet", "l4nft"}, true},
	} {
		t.Run(fault.name, func(t *testing.T) {
			before := drifts.Load()
			runNft(t, bed.Balancer.Namespace, nil, fault.nft...)
			select {
			case <-kick:
			case <-time.After(time.Second):
				t.Fatalf("no drift reported within 1 s of %s", fault.name)
			}
			if drifts.Load() == before {
				t.Fatal("kick without a drift")
			}
			if read, err := b.Refresh(testContext(t)); err != nil || !read {
				t.Fatalf("Refresh = %v, %v; want a read-back", read, err)
			}
			res := mustApply(t, b, s)
			if !res.Changed || res.Rebuilt != fault.rebuilt {
				t.Errorf("repair: changed %v rebuilt %v, want changed, rebuilt %v", res.Changed, res.Rebuilt, fault.rebuilt)
			}
			if !fault.rebuilt && res.Elements > 2 {
				t.Errorf("repairing one element sent %d", res.Elements)
			}
			if got := listRuleset(t, bed.Balancer.Namespace); normalizeCounters(got) != normalizeCounters(want) {
				t.Errorf("after the repair the ruleset differs:\n%s\nwant:\n%s", got, want)
			}
			assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 400, 8), names(bed, 2), []int{1, 1})
			// The repair is ours: no drift reported for it.
			select {
			case <-kick:
				t.Error("the repair was reported as drift")
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}

func markHex(m uint32) string {
	const digits = "0123456789abcdef"
	b := []byte("0x00000000")
	for i := 9; i >= 2; i-- {
		b[i] = digits[m&0xf]
		m >>= 4
	}
	return string(b)
}

// normalizeCounters drops the counters' values from a listing.
func normalizeCounters(s string) string {
	joined := strings.Join(strings.Fields(s), " ")
	for {
		i := strings.Index(joined, "counter packets ")
		if i < 0 {
			return joined
		}
		rest := strings.Fields(joined[i:])
		// counter packets N bytes M
		if len(rest) < 5 {
			return joined
		}
		joined = joined[:i] + "counter " + strings.Join(rest[5:], " ")
	}
}
