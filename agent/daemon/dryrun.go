package daemon

import (
	"context"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
)

// DryRun works out what a change to the farm named name would send to the
// kernel, without sending it and without writing any file: build gets the
// farm in force (nil when there is none) and returns the farm wanted (nil
// to delete it), as for an API change. The farm is validated alone, as a
// change validates it, and health is taken into account as a change would.
// It is serialised with changes, so the plan is against the state a change
// made now would start from (an edit of the file not yet reloaded is not
// loaded).
func (d *Daemon) DryRun(ctx context.Context, name string, build func(cur *config.Farm) (*config.Farm, error)) (*lb.Plan, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	next, err := build(d.index[name])
	if err != nil {
		return nil, err
	}
	if next != nil {
		if err := config.ValidateFarm(next, d.lbOpts); err != nil {
			return nil, err
		}
		p, err := d.bal.PlanFarm(ctx, d.effective(next))
		if err != nil {
			return nil, config.LocateFarm(next, err)
		}
		return p, nil
	}
	s := lb.State{Farms: make([]lb.Farm, 0, len(d.farms))}
	for _, f := range d.farms {
		if f.Name != name {
			s.Farms = append(s.Farms, d.effective(f))
		}
	}
	return d.bal.Plan(ctx, s)
}
