package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// dpSample is one measurement of one variant at one size.
type dpSample struct {
	Conn, KeepAlive loadResult
}

// dpCell gathers the repetitions of one variant at one size.
type dpCell struct {
	Variant string
	Farms   int
	// Install is how long the variant took to install the farms (once per
	// size; not a control-plane measurement, see the control-plane section).
	Install time.Duration
	Samples []dpSample
}

// dataPlane is every cell, by size then variant.
type dataPlane struct {
	Sizes    []int
	Variants []string
	Cells    map[int]map[string]*dpCell
	// BridgeNF is net.bridge.bridge-nf-call-iptables in a balancer
	// namespace.
	BridgeNF string
}

// runDataPlane measures every variant at every size. Within a size the
// variants run interleaved, A B C D E, A B C D E, ..., once per repetition;
// each visit measures new connections and then established flows, each
// after flushing the balancer's conntrack table.
func runDataPlane(ctx context.Context, cfg config, logf func(string, ...any)) (_ *dataPlane, err error) {
	vs := make([]*variant, 0, len(cfg.Variants))
	defer func() {
		for _, v := range vs {
			err = errors.Join(err, v.close())
		}
	}()
	for _, name := range cfg.Variants {
		v, err := newVariant(ctx, name, 2)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	dp := &dataPlane{Sizes: cfg.Sizes, Variants: cfg.Variants, Cells: map[int]map[string]*dpCell{}}
	if bnf, err := vs[0].bed.Balancer.Sysctl("net.bridge.bridge-nf-call-iptables"); err == nil {
		dp.BridgeNF = bnf
	} else {
		dp.BridgeNF = "absent"
	}
	for _, size := range cfg.Sizes {
		dp.Cells[size] = map[string]*dpCell{}
		for _, v := range vs {
			farms := makeFarms(size, bedBackends(v.bed, 1, 1))
			start := time.Now()
			if err := v.inst.install(ctx, farms); err != nil {
				return nil, fmt.Errorf("installing %d farms with %s: %w", size, v.name, err)
			}
			dp.Cells[size][v.name] = &dpCell{Variant: v.name, Farms: size, Install: time.Since(start)}
		}
		for rep := range cfg.Reps {
			for _, v := range vs {
				farms := makeFarms(size, bedBackends(v.bed, 1, 1))
				target := v.inst.target(farms).String()
				var s dpSample
				for _, keep := range []bool{false, true} {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					if err := flushConntrack(v.bed.Balancer.Namespace); err != nil {
						return nil, err
					}
					spec := loadSpec{Target: target, KeepAlive: keep, Workers: cfg.Workers,
						Warmup: cfg.Warmup, Duration: cfg.Duration, Timeout: 2 * time.Second}
					res, err := runLoad(ctx, v.bed.Clients[0], spec)
					if err != nil {
						return nil, fmt.Errorf("%s at %d farms: %w", v.name, size, err)
					}
					if keep {
						s.KeepAlive = res
					} else {
						s.Conn = res
					}
				}
				dp.Cells[size][v.name].Samples = append(dp.Cells[size][v.name].Samples, s)
				logf("data plane: S=%d rep %d %-16s conn %8.0f/s %6.1f µs/op (err %d)  keep-alive %8.0f/s %6.1f µs/op (err %d)  other load %.0f%%",
					size, rep+1, v.name, s.Conn.Rate(), us(s.Conn.CPUPerOp()), s.Conn.Errors,
					s.KeepAlive.Rate(), us(s.KeepAlive.CPUPerOp()), s.KeepAlive.Errors, 100*max(s.Conn.OtherLoad(), s.KeepAlive.OtherLoad()))
			}
		}
	}
	return dp, nil
}

// dpSummary is the median over repetitions of one kind of load.
type dpSummary struct {
	Rate float64
	// Min and Max are the lowest and highest rate over the repetitions.
	Min, Max float64
	P50, P99 time.Duration
	// CPUPerOp is the median CPU time per operation (see cpu.go), and
	// Other the median share of the machine other processes used.
	CPUPerOp time.Duration
	Other    float64
	Errors   int64
	Split    map[string]int64
	FirstErr string
}

// summary returns the medians of the conn (keep false) or keep-alive
// samples; errors and split add up over the repetitions.
func (c *dpCell) summary(keep bool) dpSummary {
	var rates []float64
	var p50s, p99s, cpus []time.Duration
	var others []float64
	s := dpSummary{Split: map[string]int64{}}
	for _, smp := range c.Samples {
		r := smp.Conn
		if keep {
			r = smp.KeepAlive
		}
		rates = append(rates, r.Rate())
		p50s = append(p50s, r.P50)
		p99s = append(p99s, r.P99)
		cpus = append(cpus, r.CPUPerOp())
		others = append(others, r.OtherLoad())
		s.Errors += r.Errors
		if s.FirstErr == "" {
			s.FirstErr = r.FirstErr
		}
		for k, v := range r.Split {
			s.Split[k] += v
		}
	}
	s.Rate, s.P50, s.P99 = median(rates), median(p50s), median(p99s)
	s.CPUPerOp, s.Other = median(cpus), median(others)
	if len(rates) > 0 {
		s.Min, s.Max = slices.Min(rates), slices.Max(rates)
	}
	return s
}

// median returns the middle value (the mean of the two middle values for
// an even count), or zero for none.
func median[T ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
