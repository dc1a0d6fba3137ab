package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// wideMarkMask leaves l4nft room for 2^20-1 backends, for the 100,000
// backend run (the default mask allows 65,535).
const wideMarkMask = 0xfffff000

// Control-plane operations, in report order.
const (
	opInstall = "install"
	opWeight  = "weight"
	opState   = "state"
	opAdd     = "add"
	opRemove  = "remove"
	opReapply = "reapply"
)

var cpOps = []string{opInstall, opWeight, opState, opAdd, opRemove, opReapply}

// cpRow is one system at one size.
type cpRow struct {
	// System is "l4nft" or the iptables-restore program.
	System          string
	Farms, Backends int
	// Times holds every timing of each operation.
	Times map[string][]time.Duration
	// Messages is the netlink message count of each l4nft operation (the
	// last one seen; they do not vary between repetitions).
	Messages map[string]int
	// ReapplyChanged reports whether any unchanged re-apply sent something.
	ReapplyChanged bool
	// PeakRSS is the largest rise of the process's peak resident set
	// (VmHWM, reset through /proc/self/clear_refs before each install)
	// over its resident set before the install; Alloc is the Go heap
	// allocated by one install.
	PeakRSS, Alloc uint64
	// Present describes what was read back from the kernel after an install.
	Present string
	// Err is set when the system could not do the job.
	Err string
}

func (r *cpRow) add(op string, d time.Duration) {
	if r.Times == nil {
		r.Times = map[string][]time.Duration{}
	}
	r.Times[op] = append(r.Times[op], d)
}

// cpCase is one control-plane size.
type cpCase struct {
	farms, perFarm int
}

// cpCases returns the sizes: S farms of 2 backends for every S, and
// 1,000 farms of 100 backends (100,000 backends) unless smoke.
func cpCases(cfg config) []cpCase {
	var cs []cpCase
	for _, s := range cfg.Sizes {
		cs = append(cs, cpCase{s, 2})
	}
	if cfg.WideFarms > 0 {
		cs = append(cs, cpCase{cfg.WideFarms, cfg.WidePerFarm})
	}
	return cs
}

// runControlPlane times installs and single changes with l4nft and with
// both iptables-restore flavours of the seed design, each in a namespace
// of its own.
func runControlPlane(ctx context.Context, cfg config, logf func(string, ...any)) ([]*cpRow, error) {
	var rows []*cpRow
	for _, c := range cpCases(cfg) {
		row, err := l4nftControlPlane(ctx, cfg, c, logf)
		if err != nil {
			return nil, err
		}
		rows = append(rows, row)
		for _, restore := range []string{"iptables-legacy-restore", "iptables-nft-restore"} {
			row, err := iptablesControlPlane(ctx, cfg, c, restore, logf)
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// l4nftControlPlane measures the lb library at one size in a fresh
// namespace.
func l4nftControlPlane(ctx context.Context, cfg config, c cpCase, logf func(string, ...any)) (_ *cpRow, err error) {
	ns, err := testbed.NewNamespace("cp-l4nft", "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	farms := wideFarms(c.farms, c.perFarm)
	row := &cpRow{System: varL4nft, Farms: c.farms, Backends: totalBackends(farms), Messages: map[string]int{}}
	opts := lb.Options{NetNS: nft.NetNSFd(ns.Fd()), MarkMask: wideMarkMask}
	state := lbState(farms)
	last := len(state.Farms) - 1

	for rep := range cfg.Reps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Install from nothing: no table in the namespace.
		baseRSS := resetPeakRSS()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		allocBefore := ms.TotalAlloc
		start := time.Now()
		b, err := lb.Open(ctx, opts)
		if err != nil {
			return nil, err
		}
		res, err := b.Apply(ctx, state)
		d := time.Since(start)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("l4nft: installing %d farms: %w", c.farms, err)
		}
		runtime.ReadMemStats(&ms)
		row.Alloc = max(row.Alloc, ms.TotalAlloc-allocBefore)
		if peak := peakRSS(); peak > baseRSS {
			row.PeakRSS = max(row.PeakRSS, peak-baseRSS)
		}
		row.add(opInstall, d)
		row.Messages[opInstall] = res.Messages
		if rep == 0 {
			present, err := countInstalled(ns)
			if err != nil {
				b.Close()
				return nil, err
			}
			row.Present = present
		}

		// Single changes on the installed state, each timed around Apply.
		cur := cloneLBState(state)
		apply := func(op string, s lb.State) error {
			start := time.Now()
			res, err := b.Apply(ctx, s)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("l4nft: %s at %d farms: %w", op, c.farms, err)
			}
			row.add(op, d)
			row.Messages[op] = res.Messages
			if op == opReapply && (res.Changed || res.Messages != 0) {
				row.ReapplyChanged = true
			}
			cur = s
			return nil
		}
		for i := range cfg.Changes {
			s := cloneLBState(cur)
			s.Farms[last].Backends[0].Weight = 1 + (i+1)%2
			if err := apply(opWeight, s); err != nil {
				b.Close()
				return nil, err
			}
			for _, st := range []lb.BackendState{lb.Drain, lb.Up} {
				s = cloneLBState(cur)
				s.Farms[last].Backends[0].State = st
				if err := apply(opState, s); err != nil {
					b.Close()
					return nil, err
				}
			}
			s = cloneLBState(cur)
			s.Farms[last].Backends = append(s.Farms[last].Backends, lb.Backend{
				Name: "extra", Address: netip.MustParseAddr("203.0.113.250"), Port: backendPort, Weight: 1})
			if err := apply(opAdd, s); err != nil {
				b.Close()
				return nil, err
			}
			s = cloneLBState(cur)
			s.Farms[last].Backends = s.Farms[last].Backends[:len(s.Farms[last].Backends)-1]
			if err := apply(opRemove, s); err != nil {
				b.Close()
				return nil, err
			}
			if err := apply(opReapply, cloneLBState(cur)); err != nil {
				b.Close()
				return nil, err
			}
		}
		if err := b.Remove(ctx); err != nil {
			b.Close()
			return nil, err
		}
		b.Close()
	}
	logf("control plane: l4nft %d farms x %d: install %v, weight %v, reapply changed=%t",
		c.farms, c.perFarm, median(row.Times[opInstall]), median(row.Times[opWeight]), row.ReapplyChanged)
	return row, nil
}

// countInstalled reads the l4nft table back and counts its elements and
// chains (a fixed few, whatever the number of farms).
func countInstalled(ns *testbed.Namespace) (string, error) {
	conn, err := nft.Open(nft.NetNSFd(ns.Fd()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	sets, err := conn.Sets(lb.DefaultTable)
	if err != nil {
		return "", err
	}
	slices.SortFunc(sets, func(a, b nft.Set) int { return strings.Compare(a.Name, b.Name) })
	var parts []string
	for _, set := range sets {
		es, err := conn.Elements(lb.DefaultTable, set)
		if err != nil {
			return "", fmt.Errorf("reading set %s back: %w", set.Name, err)
		}
		if len(es) > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", set.Name, len(es)))
		}
	}
	chains, err := conn.Chains(lb.DefaultTable)
	if err != nil {
		return "", err
	}
	parts = append(parts, fmt.Sprintf("chains=%d", len(chains)))
	return strings.Join(parts, " "), nil
}

// iptablesControlPlane measures an iptables-restore program installing the
// seed design at one size, and one weight change as an operator of the
// seed design makes it: iptables-restore --noflush with one -R.
func iptablesControlPlane(ctx context.Context, cfg config, c cpCase, restore string, logf func(string, ...any)) (_ *cpRow, err error) {
	ns, err := testbed.NewNamespace("cp-"+restore, "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	farms := wideFarms(c.farms, c.perFarm)
	row := &cpRow{System: restore, Farms: c.farms, Backends: totalBackends(farms)}
	rules := seedRules(farms)
	empty := "*mangle\nCOMMIT\n*nat\nCOMMIT\n"
	reps, changes := cfg.Reps, cfg.Changes
	if c.perFarm > 2 {
		// 300,000 rules, each change seconds long: a few samples make
		// the point.
		reps, changes = 1, min(changes, 3)
	}
	for range reps {
		if _, err := runIn(ctx, ns, empty, restore); err != nil {
			return nil, err
		}
		tctx, cancel := context.WithTimeout(ctx, cfg.IptablesTimeout)
		d, err := runIn(tctx, ns, rules, restore)
		cancel()
		if err != nil {
			row.Err = fmt.Sprintf("install did not complete within %v: %v", cfg.IptablesTimeout, err)
			if tctx.Err() == nil {
				return nil, err
			}
			logf("control plane: %s %d farms x %d: %s", restore, c.farms, c.perFarm, row.Err)
			return row, nil
		}
		row.add(opInstall, d)
		for i := range changes {
			d, err := runIn(ctx, ns, seedWeightChange(farms, 0, 1+(i+1)%2), restore, "--noflush")
			if err != nil {
				return nil, err
			}
			row.add(opWeight, d)
		}
	}
	logf("control plane: %s %d farms x %d: install %v, weight %v", restore, c.farms, c.perFarm,
		median(row.Times[opInstall]), median(row.Times[opWeight]))
	return row, nil
}

func cloneLBState(s lb.State) lb.State {
	out := lb.State{Farms: make([]lb.Farm, len(s.Farms))}
	copy(out.Farms, s.Farms)
	// Only the last farm is ever changed; copy its slices.
	if n := len(out.Farms); n > 0 {
		f := &out.Farms[n-1]
		f.Backends = append([]lb.Backend(nil), f.Backends...)
		f.Ports = append([]lb.PortRange(nil), f.Ports...)
	}
	return out
}

// resetPeakRSS returns the heap to the OS, resets the process's peak
// resident set (VmHWM) to its current size, and returns that size.
func resetPeakRSS() uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	return procStatus("VmRSS")
}

// peakRSS returns the process's peak resident set since the last reset.
func peakRSS() uint64 { return procStatus("VmHWM") }

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(field string) uint64 { return procStatusOf("/proc/self/status", field) }

// procStatusOf reads a "kB" field of a /proc/PID/status file, in bytes.
func procStatusOf(path, field string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

// kernelRef times the smallest nftables transactions, in a namespace of
// their own: adding one element to a set, and deleting it again. It shows
// what the kernel itself charges for a change, whoever sends it.
type kernelRef struct {
	Add, Delete []time.Duration
}

// runKernelRef measures kernelRef with n samples of each.
func runKernelRef(ctx context.Context, n int) (_ *kernelRef, err error) {
	ns, err := testbed.NewNamespace("cp-kernel", "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	conn, err := nft.Open(nft.NetNSFd(ns.Fd()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	set := nft.Set{Name: "s", Key: nftables.TypeMark}
	b := nft.NewBatch("ref")
	b.AddTable()
	b.AddSet(set)
	if err := conn.Commit(ctx, b); err != nil {
		return nil, fmt.Errorf("kernel reference: creating table: %w", err)
	}
	ref := &kernelRef{}
	for i := range n {
		e := []nft.Element{{Key: nft.Mark(uint32(i+1) << 12)}}
		for _, del := range []bool{false, true} {
			b := nft.NewBatch("ref")
			if del {
				b.DeleteElements(set, e)
			} else {
				b.AddElements(set, e)
			}
			start := time.Now()
			if err := conn.Commit(ctx, b); err != nil {
				return nil, fmt.Errorf("kernel reference: %w", err)
			}
			if d := time.Since(start); del {
				ref.Delete = append(ref.Delete, d)
			} else {
				ref.Add = append(ref.Add, d)
			}
		}
	}
	return ref, nil
}
