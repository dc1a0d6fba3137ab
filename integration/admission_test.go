package integration_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// dropWait bounds a connection attempt the balancer is expected to drop.
// It is shorter than TCP's first SYN retransmission (1s), so a dropped
// attempt sends exactly one SYN, and the balancer counts it once.
const dropWait = 500 * time.Millisecond

// outcome is what became of one connection attempt.
type outcome int

const (
	admitted outcome = iota // the backend's greeting arrived
	refused                 // ECONNREFUSED: a reset (or port unreachable) came back
	dropped                 // nothing came back before the attempt's deadline
)

func (o outcome) String() string {
	return [...]string{"admitted", "refused", "dropped"}[o]
}

// classify sorts a dial's error into an outcome; an error of another kind
// (a TCP connection made but never greeted, a routing error) fails the
// test. Over UDP, a datagram refused comes back as ICMP port unreachable
// (ECONNREFUSED); one dropped leaves the read of the answer to time out.
func classify(t *testing.T, network string, err error) outcome {
	t.Helper()
	var ne net.Error
	switch {
	case err == nil:
		return admitted
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	case strings.HasPrefix(network, "tcp") && strings.Contains(err.Error(), "reading greeting"):
		t.Fatalf("connected, but no greeting: %v", err)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return dropped
	}
	t.Fatalf("connection failed unexpectedly: %v", err)
	return 0
}

// dial makes one connection attempt from c to dst within wait and returns
// its outcome, the open connection if admitted, and how long it took.
func dial(t *testing.T, c *testbed.Client, network string, dst netip.AddrPort, wait time.Duration) (outcome, *testbed.Conn, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), wait)
	defer cancel()
	start := time.Now()
	conn, err := c.Dial(ctx, network, dst)
	return classify(t, network, err), conn, time.Since(start)
}

// mustDrop checks that an attempt from c to dst is dropped and returns
// how long it took.
func mustDrop(t *testing.T, step string, c *testbed.Client, network string, dst netip.AddrPort) time.Duration {
	t.Helper()
	o, conn, took := dial(t, c, network, dst, dropWait)
	if o != dropped {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("%s: connection from %s to %s %s, want it dropped", step, c.Name(), dst, o)
	}
	return took
}

// mustAdmit checks that a connection from c to dst is made, and returns
// it open.
func mustAdmit(t *testing.T, step string, c *testbed.Client, network string, dst netip.AddrPort) *testbed.Conn {
	t.Helper()
	o, conn, _ := dial(t, c, network, dst, 5*time.Second)
	if o != admitted {
		t.Fatalf("%s: connection from %s to %s %s, want it admitted", step, c.Name(), dst, o)
	}
	return conn
}

// farmStatus returns the status of the named farm.
func farmStatus(t *testing.T, b *lb.Balancer, name string) lb.FarmStatus {
	t.Helper()
	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, f := range st.Farms {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("status has no farm %s", name)
	return lb.FarmStatus{}
}

// burstResult counts the outcomes of a burst of connection attempts.
type burstResult struct {
	admitted, refused int
	elapsed           time.Duration
	// firstRefusal is closed when the first attempt is refused.
	firstRefusal chan struct{}
}

// burstOf makes n connection attempts from c to dst, concurrency at a
// time, as fast as they complete, and counts the outcomes. It returns an
// error if an attempt was neither admitted nor refused: a limit rejects,
// so nothing may wait for a timeout. It may run on another goroutine than
// the test's.
func burstOf(ctx context.Context, c *testbed.Client, dst netip.AddrPort, n, concurrency int, res *burstResult) error {
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		next     = make(chan struct{})
		failures []string
		once     sync.Once
	)
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for range next {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				conn, err := c.Dial(ctx, "tcp", dst)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					res.admitted++
					conn.Close()
				case errors.Is(err, syscall.ECONNREFUSED):
					res.refused++
					once.Do(func() { close(res.firstRefusal) })
				default:
					failures = append(failures, err.Error())
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	res.elapsed = time.Since(start)
	if len(failures) > 0 {
		return fmt.Errorf("%d of %d attempts neither admitted nor refused, first: %s", len(failures), n, failures[0])
	}
	return nil
}

// maxAdmitted is the most connections a token bucket of burst tokens,
// full at the start and refilled at rate per second, can admit in
// elapsed: the whole bucket plus the refill, plus one for rounding.
func maxAdmitted(rate, burst int, elapsed time.Duration) int {
	return burst + int(float64(rate)*elapsed.Seconds()) + 1
}

// established_per_client: one client holding 10 connections is refused
// its 11th to 50th, each by a reset (fast ECONNREFUSED, no timeout),
// while another client opens its own 10; the refusals are counted exactly,
// once each (a refused SYN is not retransmitted); established connections
// keep working; and once the client closes its connections it may open 10
// again.
func TestLimitEstablishedPerClient(t *testing.T) {
	const limit, attempts = 10, 50
	bed := mustBed(t, testbed.Options{Clients: 2})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("conns", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Limits = &lb.Limits{EstablishedPerClient: limit}
	g := farm("conns6", vip6, 80, lb.DNAT, backendsOf(bed, true, 80, 1, 1))
	g.Limits = &lb.Limits{EstablishedPerClient: 3}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f, g}})
	a, other := bed.Clients[0], bed.Clients[1]
	dst := ap(vip4, 80)

	var held []*testbed.Conn
	var slowest time.Duration
	for i := range attempts {
		o, conn, took := dial(t, a, "tcp", dst, 5*time.Second)
		switch {
		case o == admitted && i < limit:
			held = append(held, conn)
		case o == refused && i >= limit:
			slowest = max(slowest, took)
		default:
			if conn != nil {
				conn.Close()
			}
			t.Fatalf("attempt %d of %s holding %d connections: %s, want %d admitted then refused", i+1, a.Name(), len(held), o, limit)
		}
	}
	t.Logf("%s: %d admitted, %d refused (slowest refusal %v)", a.Name(), len(held), attempts-limit, slowest)
	if slowest > time.Second {
		t.Errorf("a refusal took %v: a reset comes back at once", slowest)
	}

	// The other client is not affected, and has a limit of its own.
	var others []*testbed.Conn
	for i := range limit {
		others = append(others, mustAdmit(t, fmt.Sprintf("%s's connection %d while %s is over its limit", other.Name(), i+1, a.Name()), other, "tcp", dst))
	}
	if o, conn, _ := dial(t, other, "tcp", dst, 5*time.Second); o != refused {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("%s's connection %d: %s, want refused", other.Name(), limit+1, o)
	}
	// The held connections still work: the limit refuses new ones only.
	assertSameBackends(t, "over the limit", held)

	rej := farmStatus(t, b, "conns").Rejected
	if want := (lb.Rejections{ClientConnections: attempts - limit + 1}); rej != want {
		t.Errorf("status: rejected %+v, want %+v (each refused SYN counted once)", rej, want)
	}

	// Closing the connections frees the client's quota, once conntrack
	// has seen them close.
	for _, c := range held {
		c.Close()
	}
	wait, cancel := context.WithTimeout(testContext(t), 15*time.Second)
	defer cancel()
	var first *testbed.Conn
	tries := 0
	if err := testbed.Eventually(wait, 100*time.Millisecond, func(ctx context.Context) error {
		tries++
		o, conn, _ := dial(t, a, "tcp", dst, 5*time.Second)
		if o != admitted {
			return fmt.Errorf("connection %s", o)
		}
		first = conn
		return nil
	}); err != nil {
		t.Fatalf("%s closed its %d connections, but is still refused: %v", a.Name(), limit, err)
	}
	t.Logf("%s admitted again after closing its connections, on try %d", a.Name(), tries)
	again := []*testbed.Conn{first}
	for i := 1; i < limit; i++ {
		again = append(again, mustAdmit(t, fmt.Sprintf("connection %d after closing", i+1), a, "tcp", dst))
	}
	if o, conn, _ := dial(t, a, "tcp", dst, 5*time.Second); o != refused {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("connection %d after closing: %s, want refused", limit+1, o)
	}
	for _, c := range append(again, others...) {
		c.Close()
	}

	// IPv6, in DNAT mode.
	for i := range 3 {
		defer mustAdmit(t, fmt.Sprintf("IPv6 connection %d", i+1), a, "tcp", ap(vip6, 80)).Close()
	}
	if o, conn, _ := dial(t, a, "tcp", ap(vip6, 80), 5*time.Second); o != refused {
		if conn != nil {
			conn.Close()
		}
		t.Errorf("IPv6 connection 4 over a limit of 3: %s, want refused", o)
	}
	if rej := farmStatus(t, b, "conns6").Rejected; rej != (lb.Rejections{ClientConnections: 1}) {
		t.Errorf("IPv6 status: rejected %+v, want 1 client_connections", rej)
	}
}

// new_per_second with a burst: 200 back-to-back attempts get at most the
// burst plus what the rate refills while they run, at least the burst,
// and every other one is refused at once and counted.
func TestLimitNewPerSecondWithBurst(t *testing.T) {
	const rate, burst, attempts = 20, 20, 200
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("rate", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Limits = &lb.Limits{NewPerSecond: rate, Burst: burst}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})

	res := burstResult{firstRefusal: make(chan struct{})}
	if err := burstOf(testContext(t), bed.Clients[0], ap(vip4, 80), attempts, 8, &res); err != nil {
		t.Fatal(err)
	}
	most := maxAdmitted(rate, burst, res.elapsed)
	t.Logf("%d attempts in %v: %d admitted, %d refused (bounds: %d to %d admitted)", attempts, res.elapsed, res.admitted, res.refused, burst, most)
	if res.admitted < burst || res.admitted > most {
		t.Errorf("%d of %d attempts in %v admitted, want %d to %d (burst %d, %d/s)", res.admitted, attempts, res.elapsed, burst, most, burst, rate)
	}
	rej := farmStatus(t, b, "rate").Rejected
	if want := (lb.Rejections{Rate: uint64(res.refused)}); rej != want {
		t.Errorf("status: rejected %+v, want %+v", rej, want)
	}

	// The rate refills the bucket: after a second and a half a full
	// burst is admitted again (poll rather than sleep a fixed time).
	wait, cancel := context.WithTimeout(testContext(t), 10*time.Second)
	defer cancel()
	if err := testbed.Eventually(wait, 250*time.Millisecond, func(ctx context.Context) error {
		o, conn, _ := dial(t, bed.Clients[0], "tcp", ap(vip4, 80), 5*time.Second)
		if conn != nil {
			conn.Close()
		}
		if o != admitted {
			return fmt.Errorf("connection %s", o)
		}
		return nil
	}); err != nil {
		t.Errorf("the rate never admitted a new connection: %v", err)
	}
}

// new_per_client_per_second: while client A, over its rate, is refused,
// client B at the same time gets its own full burst; only A's refusals are
// counted, as client_rate.
func TestLimitNewPerClientPerSecond(t *testing.T) {
	const rate, burst, attempts = 10, 10, 200
	bed := mustBed(t, testbed.Options{Clients: 2})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("clientrate", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Limits = &lb.Limits{NewPerClientPerSecond: rate, Burst: burst}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	a, other := bed.Clients[0], bed.Clients[1]

	res := burstResult{firstRefusal: make(chan struct{})}
	done := make(chan struct{})
	var burstErr error
	go func() {
		defer close(done)
		burstErr = burstOf(testContext(t), a, ap(vip4, 80), attempts, 4, &res)
	}()
	// B starts once A is over its rate, while A goes on trying.
	select {
	case <-res.firstRefusal:
	case <-done:
	}
	var bAdmitted int
	var bOutcomes []string
	for range burst {
		o, conn, _ := dial(t, other, "tcp", ap(vip4, 80), 5*time.Second)
		if conn != nil {
			conn.Close()
			bAdmitted++
		}
		bOutcomes = append(bOutcomes, o.String())
	}
	<-done
	if burstErr != nil {
		t.Fatal(burstErr)
	}
	most := maxAdmitted(rate, burst, res.elapsed)
	t.Logf("%s: %d attempts in %v: %d admitted, %d refused (bounds %d to %d); %s meanwhile: %d of %d admitted",
		a.Name(), attempts, res.elapsed, res.admitted, res.refused, burst, most, other.Name(), bAdmitted, burst)
	if res.admitted < burst || res.admitted > most {
		t.Errorf("%s: %d of %d attempts in %v admitted, want %d to %d", a.Name(), res.admitted, attempts, res.elapsed, burst, most)
	}
	if bAdmitted != burst {
		t.Errorf("%s, within its own rate while %s was over its: %d of %d admitted (%v)", other.Name(), a.Name(), bAdmitted, burst, bOutcomes)
	}
	rej := farmStatus(t, b, "clientrate").Rejected
	if want := (lb.Rejections{ClientRate: uint64(res.refused)}); rej != want {
		t.Errorf("status: rejected %+v, want %+v", rej, want)
	}
}

// Allow and deny lists, IPv4 and IPv6: a client allowed and not denied
// connects; a denied one is dropped (no reset: the attempt times out),
// deny winning over allow; one outside the allow list is dropped too; each
// dropped SYN is counted under its reason. Changing the lists takes effect
// for the very next connection and leaves established connections open.
func TestAllowDenyLists(t *testing.T) {
	bed := mustBed(t, testbed.Options{Clients: 2})
	b := mustOpen(t, bed, lb.Options{})
	a, bc := bed.Clients[0], bed.Clients[1]
	f := farm("lists", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Allow = []netip.Prefix{netip.MustParsePrefix(testbed.ClientPrefix4)}
	f.Deny = []netip.Prefix{netip.PrefixFrom(bc.Addr4, 32)}
	g := farm("lists6", vip6, 80, lb.DNAT, backendsOf(bed, true, 80, 1, 1))
	g.Allow = []netip.Prefix{netip.MustParsePrefix(testbed.ClientPrefix6)}
	g.Deny = []netip.Prefix{netip.PrefixFrom(bc.Addr6, 128)}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f, g}})
	dst, dst6 := ap(vip4, 80), ap(vip6, 80)

	// Each dropped attempt sends one SYN if it ends before the first
	// retransmission; the counts are then exact.
	var longest time.Duration
	drop := func(step string, c *testbed.Client, dst netip.AddrPort) {
		t.Helper()
		longest = max(longest, mustDrop(t, step, c, "tcp", dst))
	}
	wantCounts := func(step, farm string, want lb.Rejections) {
		t.Helper()
		got := farmStatus(t, b, farm).Rejected
		if longest < 900*time.Millisecond && got != want || got.Denied < want.Denied || got.NotAllowed < want.NotAllowed {
			t.Errorf("%s: farm %s rejected %+v, want %+v (one per dropped SYN; longest attempt %v)", step, farm, got, want, longest)
		}
	}

	held := mustAdmit(t, "allowed", a, "tcp", dst)
	held6 := mustAdmit(t, "allowed, IPv6", a, "tcp", dst6)
	for range 3 {
		drop("denied though allowed", bc, dst)
		drop("denied though allowed, IPv6", bc, dst6)
	}
	wantCounts("deny wins", "lists", lb.Rejections{Denied: 3})
	wantCounts("deny wins", "lists6", lb.Rejections{Denied: 3})

	// Deny A instead of B: at once, A's new connections are dropped and
	// B's admitted; A's established connection stays open.
	f.Deny = []netip.Prefix{netip.PrefixFrom(a.Addr4, 32)}
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	drop("after denying A", a, dst)
	heldB := mustAdmit(t, "after denying A instead of B", bc, "tcp", dst)
	assertSameBackends(t, "after denying A", []*testbed.Conn{held, held6})
	wantCounts("after denying A", "lists", lb.Rejections{Denied: 4})

	// Allow B alone, deny nothing: A is now outside the allow list.
	f.Allow, f.Deny = []netip.Prefix{netip.PrefixFrom(bc.Addr4, 32)}, nil
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	drop("A not allowed", a, dst)
	drop("A not allowed", a, dst)
	mustAdmit(t, "B allowed", bc, "tcp", dst).Close()
	assertSameBackends(t, "A no longer allowed", []*testbed.Conn{held, heldB})
	// (Whether Denied outlives the removal of the deny list is
	// TestAdmissionCountsSurviveFarmChanges's concern.)
	if got := farmStatus(t, b, "lists").Rejected.NotAllowed; longest < 900*time.Millisecond && got != 2 || got < 2 {
		t.Errorf("A not allowed: %d not_allowed, want 2", got)
	}
	wantCounts("A not allowed", "lists6", lb.Rejections{Denied: 3})
	t.Logf("longest dropped attempt: %v", longest)
}

// The rejection counts are kept by the farm's lasting id and, as
// lb.Rejections documents, survive changes of the farm until it is
// removed: a counter that an operator graphs must not go back to zero
// while the farm lives. Here the farm keeps its allow list (and so its
// lasting id) while its deny list is emptied, then set again.
func TestAdmissionCountsSurviveFarmChanges(t *testing.T) {
	bed := mustBed(t, testbed.Options{Clients: 2})
	b := mustOpen(t, bed, lb.Options{})
	a, bc := bed.Clients[0], bed.Clients[1]
	f := farm("lists", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Allow = []netip.Prefix{netip.MustParsePrefix(testbed.ClientPrefix4)}
	f.Deny = []netip.Prefix{netip.PrefixFrom(bc.Addr4, 32)}
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	for range 2 {
		mustDrop(t, "denied", bc, "tcp", ap(vip4, 80))
	}
	// Two dropped attempts: one SYN each, two if one outlived the first
	// retransmission.
	denied := farmStatus(t, b, "lists").Rejected.Denied
	if denied < 2 || denied > 4 {
		t.Fatalf("%d denied after 2 dropped attempts, want 2 (at most 4)", denied)
	}

	// A change of a backend's weight, and of the deny list's content.
	f.Backends[0].Weight = 3
	f.Deny = []netip.Prefix{netip.PrefixFrom(bc.Addr4, 32), netip.MustParsePrefix("192.0.2.200/29")}
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	if got := farmStatus(t, b, "lists").Rejected.Denied; got != denied {
		t.Errorf("after changing a weight and the deny list: %d denied, want the %d counted before", got, denied)
	}

	// The deny list emptied: B is admitted; the count stays.
	f.Deny = nil
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	mustAdmit(t, "deny list emptied", bc, "tcp", ap(vip4, 80)).Close()
	mustAdmit(t, "deny list emptied", a, "tcp", ap(vip4, 80)).Close()
	if got := farmStatus(t, b, "lists").Rejected.Denied; got != denied {
		t.Errorf("after emptying the deny list: %d denied, want the %d counted before (the farm was changed, not removed)", got, denied)
	}
}

// A limit's action: reject answers a TCP farm's SYN with a reset and a UDP
// farm's datagram with ICMP port unreachable (both ECONNREFUSED to the
// client, at once); drop answers nothing, and the client times out. Each
// is counted.
func TestLimitActions(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	tcp := farm("dropping", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	tcp.Limits = &lb.Limits{NewPerSecond: 1, Burst: 1, Action: lb.Drop}
	udp := farm("udp", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	udp.Protocol = lb.UDP
	udp.Limits = &lb.Limits{NewPerSecond: 1, Burst: 1}
	mustApply(t, b, lb.State{Farms: []lb.Farm{tcp, udp}})
	c := bed.Clients[0]

	mustAdmit(t, "tcp, within the burst", c, "tcp", ap(vip4, 80)).Close()
	took := mustDrop(t, "tcp, over the rate, action drop", c, "tcp", ap(vip4, 80))
	if rej := farmStatus(t, b, "dropping").Rejected; rej.Rate < 1 || took < 900*time.Millisecond && rej.Rate != 1 {
		t.Errorf("tcp farm: rejected %+v, want rate 1", rej)
	}

	mustAdmit(t, "udp, within the burst", c, "udp", ap(vip4, 80)).Close()
	o, conn, took := dial(t, c, "udp", ap(vip4, 80), 5*time.Second)
	if conn != nil {
		conn.Close()
	}
	if o != refused || took > time.Second {
		t.Errorf("udp, over the rate, action reject: %s after %v, want refused at once (ICMP port unreachable)", o, took)
	}
	if rej := farmStatus(t, b, "udp").Rejected; rej != (lb.Rejections{Rate: 1}) {
		t.Errorf("udp farm: rejected %+v, want rate 1", rej)
	}
}
