package integration_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
// its 11th to 50th, each by a reset (ECONNREFUSED, not a timeout),
// while another client opens its own 10; the count outlives a change of
// the farm; the refusals are counted exactly, once each (a refused SYN is
// not retransmitted); established connections keep working; and once the
// client closes its connections it may open 10 again. IPv6 too.
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
	// ECONNREFUSED within the attempt's 5s is the reset (a dropped SYN
	// would have left the attempt to time out); how fast is for the log.
	t.Logf("%s: %d admitted, %d refused (slowest refusal %v)", a.Name(), len(held), attempts-limit, slowest)

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

	// A change of the farm (a backend's weight, as a health check or an
	// operator makes) does not forget the connections counted.
	f.Backends[0].Weight = 2
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	if o, conn, _ := dial(t, a, "tcp", dst, 5*time.Second); o != refused {
		if conn != nil {
			conn.Close()
		}
		t.Fatalf("%s, holding %d connections, after a change of weight: %s, want refused", a.Name(), limit, o)
	}

	rej := farmStatus(t, b, "conns").Rejected
	if want := (lb.Rejections{ClientConnections: attempts - limit + 2}); rej != want {
		t.Errorf("status: rejected %+v, want %+v (each refused SYN counted once)", rej, want)
	}

	// Closing the connections frees the client's quota, once conntrack
	// has seen them close.
	for _, c := range held {
		c.Close()
	}
	wait, cancel := context.WithTimeout(testContext(t), 15*time.Second)
	defer cancel()
	// The closed connections leave the count as conntrack sees each one
	// close (a closing connection counts until TIME_WAIT): poll until the
	// client can open its whole quota again.
	var again []*testbed.Conn
	tries := 0
	if err := testbed.Eventually(wait, 100*time.Millisecond, func(ctx context.Context) error {
		tries++
		for len(again) < limit {
			o, conn, _ := dial(t, a, "tcp", dst, 5*time.Second)
			if o != admitted {
				return fmt.Errorf("connection %d: %s", len(again)+1, o)
			}
			again = append(again, conn)
		}
		return nil
	}); err != nil {
		t.Fatalf("%s closed its %d connections, but is still refused: %v", a.Name(), limit, err)
	}
	t.Logf("%s had its %d connections again after closing them, on try %d", a.Name(), limit, tries)
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
// client); drop answers nothing, and the client times out. Each is
// counted.
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
	if o != refused {
		t.Errorf("udp, over the rate, action reject: %s after %v, want refused (ICMP port unreachable)", o, took)
	}
	if rej := farmStatus(t, b, "udp").Rejected; rej != (lb.Rejections{Rate: 1}) {
		t.Errorf("udp farm: rejected %+v, want rate 1", rej)
	}
}

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
)

// tcpSegment builds a bare TCP header from src to dst with the given
// flags and a valid checksum (conntrack checks it before the flags).
func tcpSegment(src netip.Addr, dst netip.AddrPort, sport uint16, flags byte) []byte {
	seg := make([]byte, 20)
	binary.BigEndian.PutUint16(seg[0:], sport)
	binary.BigEndian.PutUint16(seg[2:], dst.Port())
	binary.BigEndian.PutUint32(seg[4:], 0x4c346e66) // sequence number
	seg[12] = 5 << 4                                // data offset: 5 words
	seg[13] = flags
	binary.BigEndian.PutUint16(seg[14:], 65535) // window
	// The pseudo-header of IPv4 and of IPv6 add up alike: the addresses,
	// the protocol and the length.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
	}
	add(src.AsSlice())
	add(dst.Addr().AsSlice())
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(seg[16:], ^uint16(sum))
	return seg
}

// probeUnreachable sends, from the client's namespace and in order, one
// TCP segment with flags to each of dsts over a raw socket, then collects
// for up to wait the ICMP destination unreachable messages that come back
// and returns the destination port each of them quotes. It stops early
// once it has seen one per segment sent to stopPort.
//
// The test bed's balancer has no route to the VIPs: a packet that no farm
// translates, and that the balancer does not drop, is answered with ICMP
// (net or no route) unreachable. So a quoted port shows that a segment
// went on through the balancer; a missing one, that it was dropped.
func probeUnreachable(t *testing.T, c *testbed.Client, flags byte, dsts []netip.AddrPort, stopPort uint16, wait time.Duration) []uint16 {
	t.Helper()
	v6 := dsts[0].Addr().Is6()
	src, fam, icmpProto := c.Addr4, unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		src, fam, icmpProto = c.Addr6, unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	var quoted []uint16
	err := c.Do(func() error {
		icmp, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, icmpProto)
		if err != nil {
			return fmt.Errorf("opening a raw ICMP socket: %w", err)
		}
		defer unix.Close(icmp)
		raw, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("opening a raw TCP socket: %w", err)
		}
		defer unix.Close(raw)
		want := 0
		for i, dst := range dsts {
			var sa unix.Sockaddr
			if v6 {
				sa = &unix.SockaddrInet6{Addr: dst.Addr().As16()}
			} else {
				sa = &unix.SockaddrInet4{Addr: dst.Addr().As4()}
			}
			if dst.Port() == stopPort {
				want++
			}
			if err := unix.Sendto(raw, tcpSegment(src, dst, uint16(40000+i), flags), 0, sa); err != nil {
				return fmt.Errorf("sending to %s: %w", dst, err)
			}
		}
		deadline := time.Now().Add(wait)
		buf := make([]byte, 1500)
		for seen := 0; seen < want; {
			left := time.Until(deadline)
			if left <= 0 {
				return nil
			}
			tv := unix.NsecToTimeval(left.Nanoseconds())
			if err := unix.SetsockoptTimeval(icmp, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				return err
			}
			n, _, err := unix.Recvfrom(icmp, buf, 0)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("reading ICMP: %w", err)
			}
			if port, ok := quotedPort(buf[:n], v6, dsts[0].Addr()); ok {
				quoted = append(quoted, port)
				if port == stopPort {
					seen++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", c.Name(), err)
	}
	return quoted
}

// quotedPort parses a destination unreachable message (with its IPv4
// header; an ICMPv6 one without) and returns the destination port of the
// TCP segment to vip it quotes.
func quotedPort(b []byte, v6 bool, vip netip.Addr) (uint16, bool) {
	if v6 {
		// type 1, code, checksum, unused; then the IPv6 header and TCP.
		if len(b) < 8+40+4 || b[0] != 1 || b[8+6] != unix.IPPROTO_TCP {
			return 0, false
		}
		if dst, _ := netip.AddrFromSlice(b[8+24 : 8+40]); dst != vip {
			return 0, false
		}
		return binary.BigEndian.Uint16(b[8+40+2:]), true
	}
	if len(b) < 20 {
		return 0, false
	}
	icmp := b[int(b[0]&0xf)*4:]
	// type 3, code, checksum, unused; then the IPv4 header and TCP.
	if len(icmp) < 8+20 || icmp[0] != 3 || icmp[8+9] != unix.IPPROTO_TCP {
		return 0, false
	}
	inner := icmp[8:]
	if dst, _ := netip.AddrFromSlice(inner[16:20]); dst != vip {
		return 0, false
	}
	tcp := inner[int(inner[0]&0xf)*4:]
	if len(tcp) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint16(tcp[2:]), true
}

func countPort(ports []uint16, p uint16) int {
	n := 0
	for _, q := range ports {
		if q == p {
			n++
		}
	}
	return n
}

// tcp_strict: a segment with SYN and FIN set - a flag combination
// conntrack marks invalid whatever nf_conntrack_tcp_loose says - sent to a
// strict farm's service is dropped and counted in Status; the same
// segment to a farm without tcp_strict goes on (the balancer answers it
// with ICMP unreachable) and is not counted. Valid traffic, established
// and new, is neither dropped nor counted. Turning tcp_strict on and off
// with SetFarm takes effect at once. IPv4 and IPv6.
func TestTCPStrictDropsInvalidPackets(t *testing.T) {
	const strictPort, plainPort = 80, 81
	bed := mustBed(t, testbed.Options{Ports: []uint16{strictPort, plainPort}})
	b := mustOpen(t, bed, lb.Options{})
	c := bed.Clients[0]
	var farms []lb.Farm
	for _, v6 := range []bool{false, true} {
		vip, mode, suffix := vip4, lb.NAT, ""
		if v6 {
			vip, mode, suffix = vip6, lb.DNAT, "6"
		}
		strict := farm("strict"+suffix, vip, strictPort, mode, backendsOf(bed, v6, 0, 1, 1))
		strict.TCPStrict = true
		farms = append(farms, strict, farm("plain"+suffix, vip, plainPort, mode, backendsOf(bed, v6, 0, 1, 1)))
	}
	mustApply(t, b, lb.State{Farms: farms})
	// Each unreachable costs the balancer's per-client ICMP budget twice
	// (the routing error's and ICMP's own rate limit); lift ICMP's, so
	// that the few this test needs all come back.
	for _, key := range []string{"net.ipv4.icmp_ratelimit", "net.ipv6.icmp.ratelimit"} {
		if err := bed.Balancer.SetSysctl(key, "0"); err != nil {
			t.Fatal(err)
		}
	}

	invalid := func(name string) uint64 { return farmStatus(t, b, name).Rejected.Invalid }
	waitInvalid := func(step, name string, want uint64) {
		t.Helper()
		ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
		defer cancel()
		if err := testbed.Eventually(ctx, 20*time.Millisecond, func(context.Context) error {
			if got := invalid(name); got != want {
				return fmt.Errorf("%d invalid", got)
			}
			return nil
		}); err != nil {
			t.Errorf("%s: farm %s: %v, want %d", step, name, err, want)
		}
	}

	for _, v6 := range []bool{false, true} {
		vip, network, suffix := vip4, "tcp4", ""
		if v6 {
			vip, network, suffix = vip6, "tcp6", "6"
		}
		strict, plain := "strict"+suffix, "plain"+suffix
		held := mustAdmit(t, "before", c, network, ap(vip, strictPort))
		if n := invalid(strict); n != 0 {
			t.Errorf("%s: %d invalid packets counted before any was sent", strict, n)
		}

		// Strict first, then plain, twice: once the plain segments'
		// unreachables are back, the strict ones have had their chance.
		quoted := probeUnreachable(t, c, tcpSYN|tcpFIN,
			[]netip.AddrPort{ap(vip, strictPort), ap(vip, plainPort), ap(vip, strictPort), ap(vip, plainPort)}, plainPort, 3*time.Second)
		t.Logf("%s: unreachables quote ports %v", vip, quoted)
		if n := countPort(quoted, strictPort); n != 0 {
			t.Errorf("%s: %d invalid segments to the strict farm went on through the balancer, want them dropped", vip, n)
		}
		if n := countPort(quoted, plainPort); n != 2 {
			t.Errorf("%s: %d of 2 invalid segments to the farm without tcp_strict came back unreachable, want them to go on", vip, n)
		}
		waitInvalid("2 invalid segments sent", strict, 2)
		if n := invalid(plain); n != 0 {
			t.Errorf("%s: %d invalid counted without tcp_strict", plain, n)
		}

		// Valid traffic is unaffected and not counted.
		assertSameBackends(t, "after invalid segments", []*testbed.Conn{held})
		res := c.Spread(testContext(t), network, ap(vip, strictPort), 50, 4)
		if res.Errors > 0 {
			t.Errorf("%s: new connections to the strict farm failed: %s (%v)", vip, res, res.Err)
		}
		held.Close()
		if n := invalid(strict); n != 2 {
			t.Errorf("%s: after 50 valid connections, %d invalid counted, want still 2", strict, n)
		}
	}

	// tcp_strict on for plain, off for strict: at once, the segments to
	// plain are dropped and counted, those to strict go on.
	for i := range farms {
		farms[i].TCPStrict = !farms[i].TCPStrict
		if _, err := b.SetFarm(testContext(t), farms[i]); err != nil {
			t.Fatal(err)
		}
	}
	quoted := probeUnreachable(t, c, tcpSYN|tcpFIN, []netip.AddrPort{ap(vip4, plainPort), ap(vip4, strictPort)}, strictPort, 3*time.Second)
	t.Logf("tcp_strict swapped: unreachables quote ports %v", quoted)
	if countPort(quoted, plainPort) != 0 || countPort(quoted, strictPort) != 1 {
		t.Errorf("tcp_strict swapped: unreachables quote %v, want port %d once (no longer strict) and not %d (now strict)", quoted, strictPort, plainPort)
	}
	waitInvalid("tcp_strict turned on", "plain", 1)
}
