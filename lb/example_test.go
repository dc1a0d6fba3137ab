package lb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"

	"github.com/l4nft/l4nft/lb"
)

// The seed's farm: one virtual address, two backends weighted 1:2, NAT
// mode, in the network namespace "lb" (ip netns add lb). This is the
// README's example.
func Example() {
	ctx := context.Background()
	b, err := lb.Open(ctx, lb.Options{NetNS: lb.NetNSName("lb")}) // adopts an existing table, sends nothing
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	state := lb.State{Farms: []lb.Farm{{
		Name:    "app",
		Address: netip.MustParseAddr("198.51.100.250"),
		Ports:   []lb.PortRange{lb.Port(443), {First: 8000, Last: 8010}},
		Mode:    lb.NAT, // or lb.DNAT: the client's address is kept
		Backends: []lb.Backend{
			{Name: "app0", Address: netip.MustParseAddr("203.0.113.10"), Port: 443, Weight: 1},
			{Name: "app1", Address: netip.MustParseAddr("203.0.113.11"), Port: 443, Weight: 2},
		},
	}}}
	res, err := b.Apply(ctx, state) // validates everything, then sends the difference
	var ve *lb.ValidationError
	if errors.As(err, &ve) {
		for _, p := range ve.Problems {
			fmt.Println(p) // e.g. farms[app].backends[app0].weight: 0 is not a weight ...
		}
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("changed:", res.Changed)

	// One farm at a time costs what that farm costs, whatever the number
	// of farms: drain app0 (no new connections; established ones go on).
	app := state.Farms[0]
	app.Backends[0].State = lb.Drain
	plan, err := b.PlanFarm(ctx, app) // what SetFarm would send, in nft syntax
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(plan)
	if _, err := b.SetFarm(ctx, app); err != nil {
		log.Fatal(err)
	}

	st, err := b.Status(ctx) // per backend: new connections, packets, bytes
	if err != nil {
		log.Fatal(err)
	}
	for _, be := range st.Farms[0].Backends {
		fmt.Println(be.Name, be.State, be.Connections)
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
