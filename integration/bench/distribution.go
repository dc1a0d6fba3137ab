package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/l4nft/l4nft/integration/stats"
	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// distAlpha is the significance level below which a split is judged not to
// follow the weights.
const distAlpha = 0.001

// distRow is one weighting measured with one system.
type distRow struct {
	System   string
	Weights  []int
	Counts   []int
	Errors   int64
	FirstErr string
	Chi2, P  float64
}

// distWeightings are the weightings the issue asks for.
var distWeightings = [][]int{{1, 2, 3, 4}, {1, 1000}}

// runDistribution counts which backend serves each of cfg.DistConns new
// TCP connections to a single farm with the given weights, for l4nft and for
// the seed's iptables cascade (legacy), and tests the split with Pearson's
// chi-square (p-value from the regularized upper incomplete gamma function,
// package integration/stats).
func runDistribution(ctx context.Context, cfg config, logf func(string, ...any)) (_ []distRow, err error) {
	bed, err := newBed(ctx, 4)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, bed.Close()) }()
	ns := bed.Balancer.Namespace
	bal, err := lb.Open(ctx, lb.Options{NetNS: nft.NetNSFd(ns.Fd())})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, bal.Close()) }()

	systems := []struct {
		name    string
		install func([]farm) error
		remove  func() error
	}{
		{varL4nft,
			func(fs []farm) error { _, err := bal.Apply(ctx, lbState(fs)); return err },
			func() error { return bal.Remove(ctx) }},
		{varIptablesLegacy,
			func(fs []farm) error { _, err := runIn(ctx, ns, seedRules(fs), "iptables-legacy-restore"); return err },
			func() error {
				_, err := runIn(ctx, ns, "*mangle\nCOMMIT\n*nat\nCOMMIT\n", "iptables-legacy-restore")
				return err
			}},
	}
	var rows []distRow
	for _, weights := range distWeightings {
		for _, sys := range systems {
			farms := makeFarms(1, bedBackends(bed, weights...))
			if err := sys.install(farms); err != nil {
				return nil, fmt.Errorf("distribution: installing %s: %w", sys.name, err)
			}
			row, err := measureSplit(ctx, cfg, bed, farms[0], sys.name)
			if rerr := sys.remove(); err == nil {
				err = rerr
			}
			if err != nil {
				return nil, err
			}
			logf("distribution: %-16s weights %v: %v chi2=%.2f p=%.3g errors=%d", sys.name, weights, row.Counts, row.Chi2, row.P, row.Errors)
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// measureSplit makes cfg.DistConns connections to f and tests the split.
func measureSplit(ctx context.Context, cfg config, bed *testbed.Topology, f farm, system string) (distRow, error) {
	if err := flushConntrack(bed.Balancer.Namespace); err != nil {
		return distRow{}, err
	}
	spec := loadSpec{Target: fmt.Sprintf("%s:%d", f.VIP, f.Port), Workers: cfg.Workers,
		Duration: cfg.DistLimit, MaxOps: int64(cfg.DistConns), Timeout: 2 * time.Second}
	res, err := runLoad(ctx, bed.Clients[0], spec)
	if err != nil {
		return distRow{}, fmt.Errorf("distribution with %s: %w", system, err)
	}
	row := distRow{System: system, Weights: weightsOf(f), Errors: res.Errors, FirstErr: res.FirstErr}
	shares := make([]float64, len(f.Backends))
	for i, b := range f.Backends {
		row.Counts = append(row.Counts, int(res.Split[b.Name]))
		shares[i] = float64(b.Weight)
	}
	other := res.Ops
	for _, n := range row.Counts {
		other -= int64(n)
	}
	if other != 0 {
		return row, fmt.Errorf("distribution with %s: %d connections answered by a backend outside the farm", system, other)
	}
	row.Chi2, row.P, err = stats.ChiSquare(row.Counts, shares)
	if err != nil {
		return row, fmt.Errorf("distribution with %s: %w", system, err)
	}
	return row, nil
}
