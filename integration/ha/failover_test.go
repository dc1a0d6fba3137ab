package ha

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/ti-mo/conntrack"

	"github.com/l4nft/l4nft/lb"
)

// TestNewConnectionsDuringFailover: connections opened while A dies and B
// takes over succeed (a SYN lost in the gap is retransmitted by the client
// and answered by B), and after the failover B splits new connections by
// the same weights.
func TestNewConnectionsDuringFailover(t *testing.T) {
	p := mustPair(t, lb.NAT, true)
	l := startLoad(t, p.client, 50, 10)
	p.settle(t, l)

	ctx, cancel := context.WithCancel(context.Background())
	var (
		ok, failed atomic.Int64
		firstErr   atomic.Value
		wg         sync.WaitGroup
		dst        = fmt.Sprintf("%s:%d", vip, servicePort)
	)
	for range 8 {
		wg.Go(func() {
			for i := 0; i < 10000 && ctx.Err() == nil; i++ { // bounded; stopped by cancel
				if _, err := ask(p.client, dst, 10*time.Second); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	vipMoved, _ := p.failover(t)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	t.Logf("during the failover (VIP moved after %v): %d new connections succeeded, %d failed", vipMoved.Round(time.Millisecond), ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d new connections failed during the failover (first: %v), want 0", failed.Load(), firstErr.Load())
	}

	counts, errs, err := spread(testContext(t), p.client, 600, 16, 5*time.Second)
	if errs > 0 {
		t.Errorf("%d of 600 connections after the failover failed (first: %v)", errs, err)
	}
	checkSplit(t, "new connections through B", counts, weightsByName(weights))
	if r := l.result(); r.lost > 0 {
		t.Errorf("established flows lost: %v (first: %v)", r, r.firstErr)
	}
}

// TestFailback: A comes back as after a reboot (no conntrack entries, no
// floating addresses), learns B's connections from conntrackd, joins as
// backup (no preemption), and a planned switchover back to A (keepalived on
// B stopped) loses no flow either.
func TestFailback(t *testing.T) {
	p := mustPair(t, lb.NAT, true)
	a, b := p.ha[0], p.ha[1]
	l := startLoad(t, p.client, nTCP, nUDP)
	p.settle(t, l)
	p.failover(t)
	if err := l.waitAnswers(time.Now(), 20*time.Second); err != nil {
		t.Fatalf("after the failover to B: %v", err)
	}
	if r := l.result(); r.lost > 0 {
		t.Fatalf("failover to B lost flows: %v (first: %v)", r, r.firstErr)
	}

	// A reboots: conntrackd stops, the kernel forgets every connection, the
	// addresses keepalived had added are gone.
	a.conntrackd.stop(syscall.SIGTERM)
	if err := a.ns.Do(func() error {
		c, err := conntrack.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Flush()
	}); err != nil {
		t.Fatalf("failed to flush A's conntrack table: %v", err)
	}
	if err := a.removeFloating(); err != nil {
		t.Fatal(err)
	}
	if err := a.setLinks(true, true); err != nil {
		t.Fatal(err)
	}
	os.Remove(a.notifyLog) // from here on, only the new run's transitions
	a.startConntrackd(t)   // StartupResync: asks B for everything
	a.startKeepalived(t)
	if err := a.waitBackup(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	err := eventually(15*time.Second, func() error {
		m, err := a.farmFlows()
		if err != nil {
			return err
		}
		if len(m) < len(l.flows) {
			return fmt.Errorf("A's conntrack table holds %d of %d flows", len(m), len(l.flows))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("A did not learn B's connections: %v", err)
	}
	l.resetGaps()

	start := time.Now()
	b.keepalived.stop(syscall.SIGTERM) // B gives the addresses up and sends priority 0
	if err := a.waitMaster(15 * time.Second); err != nil {
		t.Fatalf("A did not take over again: %v", err)
	}
	took := time.Since(start)
	if err := l.waitAnswers(time.Now(), 20*time.Second); err != nil {
		t.Errorf("after the failback: %v", err)
	}
	time.Sleep(time.Second)
	r := l.result()
	t.Logf("failback: A master %v after B's keepalived was stopped; %v", took.Round(time.Millisecond), r)
	if r.lost > 0 {
		t.Errorf("%d flows lost in the failback (first: %v), want 0", r.lost, r.firstErr)
	}
}

// TestBackendChangeDuringFailover: a change applied to both nodes while A
// dies and B takes over (backend0 drained, backend2's weight lowered,
// backend3 added) leaves both with the same state and the same backend
// marks; established flows continue, drained ones included, and new
// connections follow the new weights.
func TestBackendChangeDuringFailover(t *testing.T) {
	p := mustPair(t, lb.NAT, true)
	l := startLoad(t, p.client, 100, 20)
	p.settle(t, l)

	changed := farm(lb.NAT, []int{1, 2, 1, 2})
	changed.Backends[0].State = lb.Drain
	state := lb.State{Farms: []lb.Farm{changed}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	ctx := testContext(t)
	wg.Go(func() {
		time.Sleep(100 * time.Millisecond) // A is going down, B not master yet
		for i := range p.lbs {
			wg.Go(func() { _, errs[i] = p.lbs[i].Apply(ctx, state) })
		}
	})
	p.failover(t)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("failed to apply the change on %s: %v", p.nodes[i].name, err)
		}
	}
	if diff := cmp.Diff(p.lbs[0].State(), p.lbs[1].State(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("the nodes' states differ (-A +B):\n%s", diff)
	}
	marks := [2]map[string]uint32{}
	for i, b := range p.lbs {
		st, err := b.Status(testContext(t))
		if err != nil {
			t.Fatal(err)
		}
		marks[i] = backendMarks(st)
	}
	if diff := cmp.Diff(marks[0], marks[1]); diff != "" {
		t.Errorf("backend marks differ (-A +B):\n%s", diff)
	}
	if err := l.waitAnswers(time.Now(), 20*time.Second); err != nil {
		t.Errorf("after the failover: %v", err)
	}
	r := l.result()
	t.Logf("%v; flows on drained backend0: %d", r, r.perBackend["backend0"])
	if r.lost > 0 {
		t.Errorf("%d flows lost (first: %v), want 0", r.lost, r.firstErr)
	}
	counts, n, err := spread(testContext(t), p.client, 600, 16, 5*time.Second)
	if n > 0 {
		t.Errorf("%d of 600 new connections failed (first: %v)", n, err)
	}
	checkSplit(t, "new connections after the change", counts, map[string]int{"backend1": 2, "backend2": 1, "backend3": 2})
}

// backendMarks returns every backend's mark by "farm/backend".
func backendMarks(st lb.Status) map[string]uint32 {
	m := map[string]uint32{}
	for _, f := range st.Farms {
		for _, b := range f.Backends {
			m[f.Name+"/"+b.Name] = b.Mark
		}
	}
	return m
}

// TestCountersAfterFailover: B's per-backend counters attribute the synced
// connections to the backends that serve them: B gave out no new
// connection, each synced entry carries its backend's mark on B, and each
// backend's packet counter covers at least the round trips of its flows
// after the failover.
func TestCountersAfterFailover(t *testing.T) {
	p := mustPair(t, lb.NAT, true)
	l := startLoad(t, p.client, 100, 20)
	p.settle(t, l)
	before := l.result().answersByBack
	p.failover(t)
	if err := l.waitAnswers(time.Now(), 20*time.Second); err != nil {
		t.Fatalf("after the failover: %v", err)
	}
	time.Sleep(time.Second)
	l.stop()
	r := l.result()
	if r.lost > 0 {
		t.Errorf("%d flows lost (first: %v)", r.lost, r.firstErr)
	}

	st, err := p.lbs[1].Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]lb.BackendStatus{}
	for _, b := range st.Farms[0].Backends {
		byName[b.Name] = b
	}
	entries, err := p.nodes[1].farmFlows()
	if err != nil {
		t.Fatal(err)
	}
	wrong := 0
	for _, f := range l.flows {
		mark, ok := entries[f.key]
		if !ok || mark&lb.DefaultMarkMask != byName[f.backend].Mark {
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d flows have no entry on B or one whose mark is not their backend's", wrong, len(l.flows))
	}
	for name, b := range byName {
		after := r.answersByBack[name] - before[name]
		t.Logf("B: %s mark %#x: %d new connections, %d packets, %d bytes; %d flows answered %d times after the failover",
			name, b.Mark, b.Connections, b.Packets, b.Bytes, r.perBackend[name], after)
		if b.Connections != 0 {
			t.Errorf("B counted %d new connections for %s, want 0: every connection was synced", b.Connections, name)
		}
		if b.Packets < uint64(2*after) {
			t.Errorf("B counted %d packets for %s, want at least %d (2 per answered request)", b.Packets, name, 2*after)
		}
	}
}

// TestWithoutConntrackdFlowsBreak: without conntrackd, B knows nothing of
// A's connections. A TCP packet of an established connection is taken up
// by B's conntrack as new (nf_conntrack_tcp_loose) and balanced again: when
// the draw names another backend, that backend answers with a reset; when
// it names the same one, the flow survives by luck (NAT keeps the source
// port). UDP flows move to whichever backend the draw names.
func TestWithoutConntrackdFlowsBreak(t *testing.T) {
	p := mustPair(t, lb.NAT, false)
	l := startLoad(t, p.client, nTCP, nUDP)
	p.settle(t, l)
	p.failover(t)
	time.Sleep(5 * time.Second) // retransmissions reach B
	r := l.result()
	surviving := 0
	for _, f := range l.flows {
		f.mu.Lock()
		if !f.udp && f.err == nil {
			surviving++
		}
		f.mu.Unlock()
	}
	sq, sum := 0, 0
	for _, w := range weights {
		sq += w * w
		sum += w
	}
	t.Logf("without conntrackd: %v; %d of %d TCP flows survived (the same backend drawn again: expected share %.2f)",
		r, surviving, r.tcp, float64(sq)/float64(sum*sum))
	if r.resets == 0 {
		t.Errorf("no TCP flow was reset, want some: %v", r)
	}
	if r.moved == 0 {
		t.Errorf("no UDP flow moved to another backend, want some: %v", r)
	}
}
