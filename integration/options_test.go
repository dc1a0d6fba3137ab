package integration_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// A table with every farm option serves connections, lists with nft (an
// operator's first tool; nft 1.0.6 aborts on some rule shapes), and is
// adopted by a new Balancer with nothing to change.
func TestEveryOptionListsAndIsAdopted(t *testing.T) {
	bed := mustBed(t, testbed.Options{Clients: 2})
	b := mustOpen(t, bed, lb.Options{})
	f, g, h := everyOption(bed, netip.PrefixFrom(bed.Clients[1].Addr4, 32), lb.PersistSrcIPPort)
	mustApply(t, b, lb.State{Farms: []lb.Farm{f, g, h}})
	if _, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip4, 80)); err != nil {
		t.Error(err)
	}
	if _, err := bed.Clients[0].Ask(testContext(t), "tcp", ap(vip6, 80)); err != nil {
		t.Error(err)
	}
	text := listRuleset(t, bed.Balancer.Namespace)
	for _, want := range []string{"chain farm_", "ct helper set \"ftp\"", "@client_conns4", "jhash"} {
		if !strings.Contains(text, want) {
			t.Errorf("nft list ruleset lacks %q", want)
		}
	}
	b2 := mustOpen(t, bed, lb.Options{})
	p, err := b2.Plan(testContext(t), lb.State{Farms: []lb.Farm{f, g, h}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Empty() {
		t.Errorf("a new Balancer would change the table it adopted:\n%s", p)
	}
}

// Render's text of every option loads with nft -f and balances: the
// rules nft writes and reads are the ones Apply sends. (nft 1.0.6 runs
// out of registers writing an IPv6 farm that persists by address and port,
// so that one is left out here.)
func TestRenderedOptionsLoadWithNft(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 2, Ports: []uint16{80, 21}})
	f, g, h := everyOption(bed, netip.MustParsePrefix("192.0.2.99/32"), lb.PersistSrcIP)
	text, err := lb.Render(lb.State{Farms: []lb.Farm{f, g, h}}, lb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	runNft(t, bed.Balancer.Namespace, []byte(text), "-f", "-")
	c := bed.Clients[0]
	if res := c.Spread(testContext(t), "tcp", ap(vip4, 80), 20, 1); res.Errors > 0 || len(res.Counts) != 1 {
		t.Errorf("the consistent farm with persistence, from nft -f: want 20 connections on one backend, got %s", res)
	}
	if res := c.Spread(testContext(t), "tcp", ap(vip4, 21), 20, 1); res.Errors > 0 || res.Counts[bed.Backends[0].Name()] != 10 {
		t.Errorf("the round robin farm, from nft -f: want 10 of 20 connections on each backend, got %s", res)
	}
	if _, err := c.Ask(testContext(t), "tcp", ap(vip6, 80)); err != nil {
		t.Errorf("the IPv6 hash farm, from nft -f: %v", err)
	}
}

// everyOption returns three farms that use every farm option among them:
// an IPv4 consistent farm with limits, lists (denying deny), tcp_strict,
// persistence and a backend's max_connections; a round robin farm on port 21 with the ftp helper; an
// IPv6 hash farm with a deny list and persistence by persistBy.
func everyOption(bed *testbed.Topology, deny netip.Prefix, persistBy lb.PersistBy) (f, g, h lb.Farm) {
	f = farm("adm", vip4, 80, lb.NAT, backendsOf(bed, false, 80, 1, 1))
	f.Limits = &lb.Limits{NewPerSecond: 1000, NewPerClientPerSecond: 1000, EstablishedPerClient: 1000}
	f.Deny = []netip.Prefix{deny}
	f.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	f.TCPStrict = true
	f.Persistence = &lb.Persistence{TTL: lb.Duration(time.Minute)}
	f.Scheduler = lb.Consistent
	f.Backends[0].MaxConnections = 1000
	g = farm("ftp", vip4, 21, lb.NAT, backendsOf(bed, false, 21, 1, 1))
	g.Helpers = []lb.Helper{lb.FTP}
	g.Scheduler = lb.RoundRobin
	h = farm("h6", vip6, 80, lb.DNAT, backendsOf(bed, true, 80, 1, 2))
	h.Scheduler = lb.Hash
	h.HashFields = []lb.HashField{lb.SrcIP, lb.DstPort}
	h.Persistence = &lb.Persistence{By: persistBy, TTL: lb.Duration(time.Minute)}
	h.Deny = []netip.Prefix{netip.MustParsePrefix("2001:db8:dead::/48")}
	return f, g, h
}
