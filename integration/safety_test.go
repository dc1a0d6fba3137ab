package integration_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
)

func TestInvalidStateChangesNothing(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	good := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 2))}}
	mustApply(t, b, good)
	before := listRuleset(t, bed.Balancer.Namespace)

	bad := lb.State{Farms: []lb.Farm{
		farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 0)), // weight 0
		farm("api", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1)), // same service
	}}
	_, err := b.Apply(testContext(t), bad)
	var ve *lb.ValidationError
	if !errors.Is(err, lb.ErrInvalid) || !errors.As(err, &ve) {
		t.Fatalf("Apply(invalid) = %v, want a *lb.ValidationError", err)
	}
	for _, want := range []string{"farms[web].backends[backend1].weight", "farms[api].ports"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if after := listRuleset(t, bed.Balancer.Namespace); after != before {
		t.Errorf("ruleset changed by a rejected state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := b.State(); len(got.Farms) != 1 || got.Farms[0].Backends[1].Weight != 2 {
		t.Errorf("State() after a rejected apply = %+v, want the good state", got)
	}
}

// A change the kernel refuses part-way, because something deleted an
// element of ours behind our back, is finished from what the kernel
// really holds. To make the kernel refuse a valid change, delete out of
// band an element l4nft believes is installed (backend0's packet counter,
// which traffic does not need): removing backend0 deletes it again, which
// fails with ENOENT in the transaction that deletes what is no longer
// used. The Balancer reads the kernel back and sends what is left.
func TestKernelRefusalIsFinishedFromTheTruth(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3})
	b := mustOpen(t, bed, lb.Options{})
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
	mustApply(t, b, s)
	st, err := b.Status(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := nft.Open(nft.NetNSFd(bed.Balancer.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	out := nft.NewBatch("l4nft")
	out.DeleteElements(nft.Set{Name: "traffic"}, []nft.Element{{Key: nft.Mark(st.Farms[0].Backends[0].Mark)}})
	if err := conn.Commit(testContext(t), out); err != nil {
		t.Fatalf("failed to delete an element out of band: %v", err)
	}

	// Remove backend0 and add backend2.
	s.Farms[0].Backends = backendsOf(bed, false, 80, 1, 1, 1)[1:]
	if _, err := b.Apply(testContext(t), s); err != nil {
		t.Fatalf("Apply after an out-of-band deletion: %v", err)
	}
	// What is installed is exactly what a fresh process would install.
	fresh := mustOpen(t, bed, lb.Options{})
	if res := mustApply(t, fresh, s); res.Changed {
		t.Errorf("a new process found %d elements to change after the repair", res.Elements)
	}
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 400, 8), names(bed, 3)[1:], []int{1, 1})
}

// Another table in the same namespace, and other users of the packet and
// conntrack marks, keep working alongside l4nft, and l4nft never changes
// them.
func TestForeignTableAndMarksUntouched(t *testing.T) {
	bed := mustBed(t, testbed.Options{})
	ns := bed.Balancer.Namespace
	// The foreign table marks packets (meta mark 0x1) before l4nft's
	// hook, sets its own conntrack mark bit (0x42, outside l4nft's
	// 0xffffff00) after it, and counts both on the way to the backends.
	foreign := `table inet other {
	chain pre_early {
		type filter hook prerouting priority -160; policy accept;
		ip daddr 198.51.100.250 meta mark set 0x1
	}
	chain pre_late {
		type filter hook prerouting priority -140; policy accept;
		ip daddr 198.51.100.250 ct mark set ct mark | 0x42
	}
	chain post {
		type filter hook postrouting priority 0; policy accept;
		ip daddr 203.0.113.0/24 meta mark 0x1 counter name packet_marks
		ip daddr 203.0.113.0/24 ct mark & 0xff == 0x42 counter name conn_marks
	}
	counter packet_marks {}
	counter conn_marks {}
}
`
	runNft(t, ns, []byte(foreign), "-f", "-")
	listForeign := func() string {
		// Counters aside, the foreign table must be exactly as written.
		out := runNft(t, ns, nil, "list", "table", "inet", "other")
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			if !strings.Contains(l, "packets") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	before := listForeign()

	b := mustOpen(t, bed, lb.Options{FlushConntrack: true})
	s := lb.State{Farms: []lb.Farm{farm("web", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))}}
	mustApply(t, b, s)
	assertSplit(t, spreadOf(t, bed.Clients[0], "tcp", ap(vip4, 80), 200, 4), names(bed, 2), []int{1, 1})

	counters := runNft(t, ns, nil, "list", "counters", "table", "inet", "other")
	for _, name := range []string{"packet_marks", "conn_marks"} {
		if !strings.Contains(counters, "counter "+name) || counterPackets(t, counters, name) == 0 {
			t.Errorf("foreign counter %s did not count:\n%s", name, counters)
		}
	}
	// Every conntrack entry to a backend carries both marks.
	flows := dumpConntrack(t, bed)
	n := 0
	for _, f := range flows {
		if f.TupleOrig.IP.DestinationAddress != vip4 {
			continue
		}
		n++
		if f.Mark&0xff != 0x42 || f.Mark&0xffffff00 == 0 {
			t.Errorf("flow %v has mark %#08x, want l4nft's bits and the foreign 0x42", f.TupleOrig, f.Mark)
		}
	}
	if n == 0 {
		t.Error("no conntrack entry to the VIP")
	}

	// Changing and removing l4nft's table leaves the foreign one alone.
	s.Farms[0].Backends[0].State = lb.Down
	mustApply(t, b, s)
	if err := b.Remove(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if after := listForeign(); after != before {
		t.Errorf("foreign table changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func counterPackets(t *testing.T, listing, name string) int {
	t.Helper()
	i := strings.Index(listing, "counter "+name)
	if i < 0 {
		return 0
	}
	var packets int
	rest := listing[i:]
	j := strings.Index(rest, "packets ")
	if j < 0 {
		return 0
	}
	fmt.Sscanf(rest[j:], "packets %d", &packets)
	return packets
}

func dumpConntrack(t *testing.T, bed *testbed.Topology) []conntrack.Flow {
	t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: bed.Balancer.Fd()})
	if err != nil {
		t.Fatalf("failed to dial conntrack: %v", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		t.Fatalf("failed to dump conntrack: %v", err)
	}
	return flows
}
