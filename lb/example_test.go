package lb_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// The seed's farm: one virtual address, two backends weighted 1:2, NAT mode.
func Example() {
	ctx := context.Background()
	b, err := lb.Open(ctx, lb.Options{NetNS: nft.NetNSName("lb")})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	state := lb.State{Farms: []lb.Farm{{
		Name:     "app",
		Address:  netip.MustParseAddr("198.51.100.250"),
		Ports:    []lb.PortRange{lb.Port(443)},
		Protocol: lb.TCP,
		Mode:     lb.NAT,
		Backends: []lb.Backend{
			{Name: "app0", Address: netip.MustParseAddr("203.0.113.10"), Port: 443, Weight: 1},
			{Name: "app1", Address: netip.MustParseAddr("203.0.113.11"), Port: 443, Weight: 2},
		},
	}}}
	res, err := b.Apply(ctx, state)
	if err != nil {
		log.Fatal(err) // a *lb.ValidationError names every bad field
	}
	fmt.Println("changed:", res.Changed)

	// Drain app0: no new connections, established ones continue. Only
	// app0's elements and the farm's chain are sent.
	state.Farms[0].Backends[0].State = lb.Drain
	if _, err := b.Apply(ctx, state); err != nil {
		log.Fatal(err)
	}
}

func ExampleRender() {
	state := lb.State{Farms: []lb.Farm{{
		Name:    "dns",
		Address: netip.MustParseAddr("198.51.100.53"),
		Ports:   []lb.PortRange{lb.Port(53)},
		Backends: []lb.Backend{
			{Name: "ns1", Address: netip.MustParseAddr("203.0.113.53"), Weight: 1},
		},
	}}}
	text, err := lb.Render(state, lb.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(text) > 0)
	// Output: true
}
