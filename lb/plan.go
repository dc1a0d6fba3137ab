package lb

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Plan is what an Apply would do, worked out without doing it: the farms
// it would add, change and remove, and the transactions it would send.
type Plan struct {
	// Added, Changed and Removed name the farms concerned, sorted.
	Added, Changed, Removed []string
	// Rebuild says the table would be (re)created whole.
	Rebuild bool
	// Transactions, Messages and Elements count what would be sent.
	Transactions, Messages, Elements int
	text                             []string
}

// Empty reports whether applying would send nothing.
func (p *Plan) Empty() bool { return p.Transactions == 0 }

// String returns the transactions in nft syntax: the elements that would
// be added and deleted, in the order they would be sent, or the whole
// ruleset for a rebuild.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %d farms added, %d changed, %d removed; %d transactions, %d messages, %d elements\n",
		len(p.Added), len(p.Changed), len(p.Removed), p.Transactions, p.Messages, p.Elements)
	n := 0
	for _, t := range p.text {
		if t == "" {
			continue
		}
		n++
		fmt.Fprintf(&b, "# transaction %d\n%s", n, t)
	}
	return b.String()
}

// Plan validates s and works out what Apply(ctx, s) would send, without
// sending anything. Invalid, it returns a *ValidationError as Apply does.
func (b *Balancer) Plan(ctx context.Context, s State) (*Plan, error) {
	if err := Validate(s, b.opts); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var removed []string
	names := make(map[string]bool, len(s.Farms))
	for _, f := range s.Farms {
		names[f.Name] = true
	}
	for name := range b.farms {
		if !names[name] {
			removed = append(removed, name)
		}
	}
	return b.exportPlan(s.Farms, removed)
}

// PlanFarm works out what SetFarm(ctx, f) would send, without sending it.
func (b *Balancer) PlanFarm(ctx context.Context, f Farm) (*Plan, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.validateFarm(f); err != nil {
		return nil, err
	}
	return b.exportPlan([]Farm{f}, nil)
}

func (b *Balancer) exportPlan(set []Farm, removed []string) (*Plan, error) {
	p, err := b.planText(set, removed, true)
	if err != nil {
		return nil, fmt.Errorf("planning for table %s: %w", b.opts.Table, err)
	}
	out := &Plan{Rebuild: b.rebuild, text: p.text}
	for name, c := range p.changed {
		switch {
		case c == nil:
			out.Removed = append(out.Removed, name)
		case b.farms[name] == nil:
			out.Added = append(out.Added, name)
		default:
			out.Changed = append(out.Changed, name)
		}
	}
	slices.Sort(out.Added)
	slices.Sort(out.Changed)
	slices.Sort(out.Removed)
	for _, batch := range p.batches {
		if !batch.Empty() {
			out.Transactions++
			out.Messages += batch.Messages()
			out.Elements += batch.Elements()
		}
	}
	return out, nil
}
