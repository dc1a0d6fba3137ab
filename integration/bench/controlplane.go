package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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

// The same single changes through Balancer.SetFarm (one farm, validated
// and compared alone), a whole farm removed and set again, and the reads:
// lb.Open of the installed table (full read-back), lb.Open trusting
// Options.StateFile after a Close, and Balancer.Status.
const (
	opSFWeight     = "SetFarm weight"
	opSFState      = "SetFarm state"
	opSFAdd        = "SetFarm add"
	opSFRemove     = "SetFarm remove"
	opRemoveFarm   = "RemoveFarm"
	opSetFarmNew   = "SetFarm new farm"
	opFarmReplace  = "RemoveFarm + SetFarm"
	opOpen         = "Open"
	opOpenState    = "Open with StateFile"
	opStatus       = "Status"
	libChangeLimit = time.Millisecond
)

// sfOps pairs each single change through Apply with the same through
// SetFarm, in report order.
var sfOps = [][2]string{{opWeight, opSFWeight}, {opState, opSFState}, {opAdd, opSFAdd}, {opRemove, opSFRemove}}

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
	// StateFileTrusted counts the timed Opens with Options.StateFile for
	// which the ruleset generation had not moved since the Close that
	// wrote the file (so the read-back could be skipped); StatusFarms is
	// the farm count the last Status reported.
	StateFileTrusted, StatusFarms int
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
		for _, v := range append([]string{varL4nft}, cfg.CPOptions...) {
			row, err := l4nftControlPlane(ctx, cfg, c, v, logf)
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
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
// namespace, every farm with variant's option.
func l4nftControlPlane(ctx context.Context, cfg config, c cpCase, variant string, logf func(string, ...any)) (_ *cpRow, err error) {
	ns, err := testbed.NewNamespace("cp-l4nft", "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	farms := wideFarms(c.farms, c.perFarm)
	row := &cpRow{System: variant, Farms: c.farms, Backends: totalBackends(farms), Messages: map[string]int{}}
	opts := lb.Options{NetNS: nft.NetNSFd(ns.Fd()), MarkMask: wideMarkMask}
	state := lbState(farms)
	for i := range state.Farms {
		farmOption[variant](&state.Farms[i])
	}
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
		if cur, err = setFarmChanges(ctx, cfg, b, row, cur); err != nil {
			b.Close()
			return nil, err
		}
		if b, err = measureOpen(ctx, ns, opts, b, row, cur); err != nil {
			return nil, err
		}
		start = time.Now()
		st, err := b.Status(ctx)
		d = time.Since(start)
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("l4nft: Status at %d farms: %w", c.farms, err)
		}
		row.add(opStatus, d)
		row.StatusFarms = len(st.Farms)
		if len(st.Farms) != c.farms {
			b.Close()
			return nil, fmt.Errorf("l4nft: Status at %d farms reported %d farms", c.farms, len(st.Farms))
		}
		if err := b.Remove(ctx); err != nil {
			b.Close()
			return nil, err
		}
		b.Close()
	}
	logf("control plane: %s %d farms x %d: install %v, weight %v (SetFarm %v), reapply changed=%t, Open %v (state file %v), Status %v",
		variant, c.farms, c.perFarm, median(row.Times[opInstall]), median(row.Times[opWeight]), median(row.Times[opSFWeight]), row.ReapplyChanged,
		median(row.Times[opOpen]), median(row.Times[opOpenState]), median(row.Times[opStatus]))
	return row, nil
}

// setFarmChanges makes the single changes of the Apply loop again through
// SetFarm, on the installed state cur (whose last farm they change), then
// removes the last farm and sets it again; it returns what is installed.
func setFarmChanges(ctx context.Context, cfg config, b *lb.Balancer, row *cpRow, cur lb.State) (lb.State, error) {
	cur = cloneLBState(cur)
	last := len(cur.Farms) - 1
	set := func(op string, f lb.Farm) (time.Duration, error) {
		start := time.Now()
		res, err := b.SetFarm(ctx, f)
		d := time.Since(start)
		if err != nil {
			return 0, fmt.Errorf("l4nft: %s at %d farms: %w", op, len(cur.Farms), err)
		}
		if !res.Changed {
			return 0, fmt.Errorf("l4nft: %s at %d farms sent nothing", op, len(cur.Farms))
		}
		row.add(op, d)
		row.Messages[op] = res.Messages
		cur.Farms[last] = f
		return d, nil
	}
	farmCopy := func() lb.Farm {
		f := cur.Farms[last]
		f.Backends = slices.Clone(f.Backends)
		return f
	}
	for i := range cfg.Changes {
		f := farmCopy()
		f.Backends[0].Weight = 1 + i%2
		if f.Backends[0].Weight == cur.Farms[last].Backends[0].Weight {
			f.Backends[0].Weight = 3 - f.Backends[0].Weight
		}
		if _, err := set(opSFWeight, f); err != nil {
			return cur, err
		}
		for _, st := range []lb.BackendState{lb.Drain, lb.Up} {
			f = farmCopy()
			f.Backends[0].State = st
			if _, err := set(opSFState, f); err != nil {
				return cur, err
			}
		}
		f = farmCopy()
		f.Backends = append(f.Backends, lb.Backend{
			Name: "extra", Address: netip.MustParseAddr("203.0.113.250"), Port: backendPort, Weight: 1})
		if _, err := set(opSFAdd, f); err != nil {
			return cur, err
		}
		f = farmCopy()
		f.Backends = f.Backends[:len(f.Backends)-1]
		if _, err := set(opSFRemove, f); err != nil {
			return cur, err
		}
		// The whole farm: removed, then set again as a new farm.
		f = farmCopy()
		start := time.Now()
		res, err := b.RemoveFarm(ctx, f.Name)
		d := time.Since(start)
		if err != nil {
			return cur, fmt.Errorf("l4nft: RemoveFarm at %d farms: %w", len(cur.Farms), err)
		}
		row.add(opRemoveFarm, d)
		row.Messages[opRemoveFarm] = res.Messages
		d2, err := set(opSetFarmNew, f)
		if err != nil {
			return cur, err
		}
		row.add(opFarmReplace, d+d2)
	}
	return cur, nil
}

// measureOpen closes b and times lb.Open of the installed table twice:
// without a state file (the table is read back) and with
// Options.StateFile written by a previous Close, nothing having changed
// since. It checks that both saw the state cur, and returns the open
// Balancer (with the state file option; the caller closes it).
func measureOpen(ctx context.Context, ns *testbed.Namespace, opts lb.Options, b *lb.Balancer, row *cpRow, cur lb.State) (*lb.Balancer, error) {
	if err := b.Close(); err != nil {
		return nil, err
	}
	check := func(what string, b *lb.Balancer) error {
		if err := sameBackends(b.State(), cur); err != nil {
			b.Close()
			return fmt.Errorf("l4nft: %s at %d farms: %w", what, len(cur.Farms), err)
		}
		return nil
	}
	start := time.Now()
	b, err := lb.Open(ctx, opts)
	d := time.Since(start)
	if err != nil {
		return nil, err
	}
	row.add(opOpen, d)
	if err := check("Open", b); err != nil {
		return nil, err
	}
	if err := b.Close(); err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "l4nft-bench-state-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts.StateFile = filepath.Join(dir, "state.json")
	if b, err = lb.Open(ctx, opts); err != nil { // reads back: no file yet
		return nil, err
	}
	if err := b.Close(); err != nil { // writes the file
		return nil, err
	}
	gen := func() (uint32, error) {
		conn, err := nft.Open(nft.NetNSFd(ns.Fd()))
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		return conn.Generation()
	}
	g0, err := gen()
	if err != nil {
		return nil, err
	}
	start = time.Now()
	b, err = lb.Open(ctx, opts)
	d = time.Since(start)
	if err != nil {
		return nil, err
	}
	row.add(opOpenState, d)
	if err := check("Open with StateFile", b); err != nil {
		return nil, err
	}
	if g1, err := gen(); err == nil && g1 == g0 {
		row.StateFileTrusted++
	}
	// The file is of no further use; without it Close writes nothing.
	b2, err := lb.Open(ctx, lb.Options{NetNS: opts.NetNS, MarkMask: opts.MarkMask})
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Close()
	return b2, nil
}

// sameBackends checks that got has the farms of want, with the same
// backends, weights and states.
func sameBackends(got, want lb.State) error {
	if len(got.Farms) != len(want.Farms) {
		return fmt.Errorf("%d farms read, want %d", len(got.Farms), len(want.Farms))
	}
	have := make(map[string]*lb.Farm, len(got.Farms))
	for i := range got.Farms {
		have[got.Farms[i].Name] = &got.Farms[i]
	}
	for _, w := range want.Farms {
		g := have[w.Name]
		if g == nil {
			return fmt.Errorf("farm %s missing", w.Name)
		}
		if len(g.Backends) != len(w.Backends) {
			return fmt.Errorf("farm %s: %d backends, want %d", w.Name, len(g.Backends), len(w.Backends))
		}
		for _, wb := range w.Backends {
			i := slices.IndexFunc(g.Backends, func(b lb.Backend) bool { return b.Name == wb.Name })
			if i < 0 || g.Backends[i].Weight != wb.Weight || g.Backends[i].State != wb.State {
				return fmt.Errorf("farm %s: backend %s differs or is missing", w.Name, wb.Name)
			}
		}
	}
	return nil
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
	// The schedule is split over numbered maps (schedule00, ...): one
	// count for all of them.
	shards, shardElems := 0, 0
	for _, set := range sets {
		es, err := conn.Elements(lb.DefaultTable, set)
		if err != nil {
			return "", fmt.Errorf("reading set %s back: %w", set.Name, err)
		}
		if rest, ok := strings.CutPrefix(set.Name, "schedule"); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			shards++
			shardElems += len(es)
			continue
		}
		if len(es) > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", set.Name, len(es)))
		}
	}
	if shards > 0 {
		parts = append(parts, fmt.Sprintf("schedule00-%02d=%d", shards-1, shardElems))
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
