package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// machine describes where a run happened.
type machine struct {
	CPUs                    int
	CPU, Kernel, Go, Memory string
	Iptables, Nft           string
	// Revision is the repository's commit and whether lb, nft or agent
	// differed from it.
	Revision string
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(b), "\n"); ok {
			m.Memory = strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	version := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(out))
	}
	m.Iptables = version("iptables-legacy", "--version") + ", " + version("iptables-nft", "--version")
	m.Nft = version("nft", "--version")
	m.Revision = version("git", "rev-parse", "--short", "HEAD")
	if out, err := exec.Command("git", "status", "--porcelain", "--", "lb", "nft", "agent").Output(); err == nil && len(out) > 0 {
		m.Revision += fmt.Sprintf(" with uncommitted changes to %d files in lb/, nft/ or agent/", strings.Count(string(out), "\n"))
	}
	return m
}

// writeReport writes the markdown report and the plot.
func writeReport(cfg config, res *results) error {
	md := renderMarkdown(cfg, res)
	// Sections this run did not measure are kept from the report it
	// replaces, and so is the agent suite's section, which its own runs
	// write.
	if prev, err := os.ReadFile(cfg.Out); err == nil {
		md = keepUnmeasured(md, string(prev), res)
	}
	if err := os.WriteFile(cfg.Out, []byte(md), 0o644); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	if res.DataPlane != nil {
		if err := os.WriteFile(plotPath(cfg.Out), []byte(renderPlot(res.DataPlane)), 0o644); err != nil {
			return fmt.Errorf("writing plot: %w", err)
		}
	}
	return nil
}

// reportSections are the measured sections in report order, each with the
// prefixes of its rows in the Targets table.
var reportSections = []struct {
	heads   []string
	targets []string
	ran     func(*results) bool
}{
	{[]string{headConn, headKeep}, []string{"| l4nft >= 0.97 x floor", "| (reference) l4nft's CPU/op", "| (reference) seed design"},
		func(r *results) bool { return r.DataPlane != nil }},
	{[]string{headControl}, []string{"| Install ", "| 100000 backends", "| Library: ", "| One backend change", "| Re-applying"},
		func(r *results) bool { return r.ControlPlane != nil }},
	{[]string{headDist}, nil, func(r *results) bool { return r.Distribution != nil }},
}

// keepUnmeasured puts into md, a report of a run that measured only some
// sections, the other sections of prev (the report it replaces), in their
// places, with their rows of the Targets table marked as kept, and says
// in the header which run they come from.
func keepUnmeasured(md, prev string, res *results) string {
	var kept, rows []string
	for _, sec := range reportSections {
		if sec.ran(res) {
			continue
		}
		for _, head := range sec.heads {
			start, end := sectionBounds(prev, head)
			if start < 0 || strings.Contains(md, "\n"+head+"\n") {
				continue
			}
			md = insertSection(md, prev[start:end])
			kept = append(kept, strings.TrimPrefix(head, "## "))
		}
		if start, end := sectionBounds(prev, headTargets); start >= 0 {
			for line := range strings.SplitSeq(prev[start:end], "\n") {
				for _, prefix := range sec.targets {
					if strings.HasPrefix(line, prefix) && !strings.Contains(line, "(earlier run)") {
						cells := strings.SplitN(line, " | ", 2)
						line = cells[0] + " (earlier run) | " + cells[1]
					}
					if strings.HasPrefix(line, prefix) {
						rows = append(rows, line)
						break
					}
				}
			}
		}
	}
	if len(rows) > 0 {
		if i := strings.Index(md, "\n|---|---|---|\n"); i >= 0 {
			i += len("\n|---|---|---|\n")
			md = md[:i] + strings.Join(rows, "\n") + "\n" + md[i:]
		}
	}
	if len(kept) > 0 {
		var from []string
		head, _, _ := strings.Cut(prev, "\n## ")
		for line := range strings.SplitSeq(head, "\n") {
			for _, k := range []string{"- Date: ", "- Code: ", "- Command "} {
				if strings.HasPrefix(line, k) {
					from = append(from, strings.TrimPrefix(line, "- "))
				}
			}
			if strings.HasPrefix(line, "![") && strings.Contains(strings.Join(kept, " "), "Data plane") && !strings.Contains(md, line) {
				md = strings.Replace(md, "\n"+headTargets+"\n", "\n"+line+"\n\n"+headTargets+"\n", 1)
			}
		}
		note := fmt.Sprintf("- Not measured by this run, kept from the report it replaced (marked \"earlier run\" in Targets): %s. That report's run: %s\n",
			strings.Join(kept, "; "), strings.Join(from, "; "))
		if i := strings.Index(md, "\n- Settings: "); i >= 0 {
			if j := strings.Index(md[i+1:], "\n"); j >= 0 {
				at := i + 1 + j + 1
				md = md[:at] + note + md[at:]
			}
		}
	}
	if agent := keptSection(prev, headAgent); agent != "" {
		md = spliceSection(md, headAgent, agent)
	}
	return md
}

// insertSection puts section into md before the first section that
// follows it in report order (or before Limits).
func insertSection(md, section string) string {
	order := []string{headTargets, headConn, headKeep, headControl, headDist, headAgent, headLimits}
	head, _, _ := strings.Cut(section, "\n")
	i := slices.Index(order, head)
	for _, next := range order[i+1:] {
		if start, _ := sectionBounds(md, next); start >= 0 {
			return md[:start] + section + md[start:]
		}
	}
	return strings.TrimRight(md, "\n") + "\n\n" + section
}

// Section headings; the smoke test checks that each is present.
const (
	headTargets  = "## Targets"
	headConn     = "## Data plane: new connections"
	headKeep     = "## Data plane: established flows"
	headControl  = "## Control plane"
	headDist     = "## Distribution accuracy"
	headLimits   = "## Limits"
	headMethod   = "## Method"
	headSmokeTag = "SMOKE RUN"
)

// headLibChanges is a subsection of the control plane.
const headLibChanges = "### l4nft library: one change through Apply and through SetFarm; Open and Status"

func renderMarkdown(cfg config, res *results) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# l4nft benchmark results\n\n")
	if cfg.Smoke {
		p("**%s**: tiny sizes and durations; these numbers say nothing about speed.\n\n", headSmokeTag)
	}
	m := res.Machine
	p("- Date: %s (run took %s)\n", res.Started.UTC().Format("2006-01-02 15:04 MST"), res.Finished.Sub(res.Started).Round(time.Second))
	p("- Machine: %d cores (%s), %s RAM, Linux %s\n", m.CPUs, m.CPU, m.Memory, m.Kernel)
	p("- Software: %s; %s; %s\n", m.Go, m.Iptables, m.Nft)
	p("- Code: %s\n", m.Revision)
	p("- Command (as root, from the repository root): `%s`\n", cfg.Command)
	if res.DataPlane != nil {
		p("- Settings: %d repetitions (medians reported), %v measured + %v warm-up per data-plane point, %d concurrent clients, sizes %v farms of 2 backends\n\n",
			cfg.Reps, cfg.Duration, cfg.Warmup, cfg.Workers, cfg.Sizes)
	} else {
		p("- Settings: %d repetitions (medians reported), sections %s, sizes %v farms of 2 backends\n\n", cfg.Reps, strings.Join(cfg.Sections, ","), cfg.Sizes)
	}
	if res.DataPlane != nil {
		p("![ops/s ratio to floor vs farms](%s)\n\n", "ratio.svg")
	}

	renderTargets(&b, cfg, res)
	if dp := res.DataPlane; dp != nil {
		renderDataPlane(&b, dp, false, cfg.Workers)
		renderDataPlane(&b, dp, true, cfg.Workers)
	}
	if res.ControlPlane != nil {
		renderControlPlane(&b, res.ControlPlane, res.KernelRef)
	}
	if res.Distribution != nil {
		renderDistribution(&b, res.Distribution)
	}
	renderLimits(&b)
	bridgeNF := "not measured"
	if res.DataPlane != nil {
		bridgeNF = res.DataPlane.BridgeNF
	}
	renderMethod(&b, cfg, res.DataPlane != nil, bridgeNF)
	return b.String()
}

// verdict formats a target check.
func verdict(met bool, miss string) string {
	if met {
		return "met"
	}
	return "**missed** " + miss
}

func renderTargets(b *strings.Builder, cfg config, res *results) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("%s\n\nData-plane ratios are judged two ways: by throughput (ops/s over floor's ops/s, what the issue asks) and by CPU cost (floor's CPU time per operation over the variant's; see Method), which other load on the machine disturbs far less. Where the two disagree, compare the \"range over reps\" and \"other load\" columns below.\n\n| Target | Measured | Verdict |\n|---|---|---|\n", headTargets)
	if dp := res.DataPlane; dp != nil && contains(dp.Variants, varL4nft) {
		for _, keep := range []bool{false, true} {
			kind := "new connections"
			if keep {
				kind = "established flows"
			}
			for _, m := range []struct {
				what  string
				ratio func(int, string, bool) float64
			}{{"ops/s", dp.ratio}, {"CPU time per op", dp.cpuRatio}} {
				worst, worstS := math.Inf(1), 0
				var parts []string
				for _, s := range dp.Sizes {
					r := m.ratio(s, varL4nft, keep)
					parts = append(parts, fmt.Sprintf("S=%d: %.3f", s, r))
					if r < worst {
						worst, worstS = r, s
					}
				}
				p("| l4nft >= 0.97 x floor, %s, every S (by %s) | %s | %s |\n", kind, m.what, strings.Join(parts, ", "),
					verdict(worst >= 0.97, fmt.Sprintf("at S=%d by %.1f%% of floor", worstS, (0.97-worst)*100)))
			}
		}
		first, last := dp.Sizes[0], dp.Sizes[len(dp.Sizes)-1]
		p("| (reference) l4nft's CPU/op from the smallest to the largest S | CPU/op S=%d -> S=%d: %.1f -> %.1f µs (new), %.1f -> %.1f µs (established) | - |\n", first, last,
			us(dp.Cells[first][varL4nft].summary(false).CPUPerOp), us(dp.Cells[last][varL4nft].summary(false).CPUPerOp),
			us(dp.Cells[first][varL4nft].summary(true).CPUPerOp), us(dp.Cells[last][varL4nft].summary(true).CPUPerOp))
		if contains(dp.Variants, varIptablesLegacy) {
			s := dp.Sizes[len(dp.Sizes)-1]
			p("| (reference) seed design with iptables-legacy at S=%d | %.3f x floor (new), %.3f x floor (established) | - |\n",
				s, dp.ratio(s, varIptablesLegacy, false), dp.ratio(s, varIptablesLegacy, true))
		}
	}
	if cp := res.ControlPlane; cp != nil {
		for _, r := range cp {
			if r.System != varL4nft {
				continue
			}
			inst := median(r.Times[opInstall])
			if r.Farms == 10000 && r.Backends == 20000 {
				p("| Install 10,000 farms x 2 backends <= 0.3 s | %s | %s |\n", fmtDur(inst),
					verdict(inst <= 300*time.Millisecond, fmt.Sprintf("by %s (%.1fx)", fmtDur(inst-300*time.Millisecond), inst.Seconds()/0.3)))
			}
			if r.Backends >= 100000 {
				present := strings.Contains(r.Present, fmt.Sprintf("dnat4=%d ", r.Backends)) &&
					strings.Contains(r.Present, fmt.Sprintf("backends=%d ", r.Backends))
				p("| %d backends (%d farms x %d) <= 1 s, every element present | %s; read back: %s | %s |\n",
					r.Backends, r.Farms, r.Backends/r.Farms, fmtDur(inst), r.Present,
					verdict(inst <= time.Second && present, fmt.Sprintf("by %s (%.1fx)%s", fmtDur(inst-time.Second), inst.Seconds(), map[bool]string{true: "", false: "; elements missing"}[present])))
			}
		}
		worst, where := time.Duration(0), ""
		changed := false
		for _, r := range cp {
			if r.System != varL4nft {
				continue
			}
			for _, op := range []string{opWeight, opState, opAdd, opRemove} {
				if d := median(r.Times[op]); d > worst {
					worst, where = d, fmt.Sprintf("%s at %d farms x %d", op, r.Farms, r.Backends/max(1, r.Farms))
				}
			}
			changed = changed || r.ReapplyChanged
		}
		for _, r := range cp {
			if r.System != varL4nft || r.Farms != 10000 || r.Backends != 20000 || len(r.Times[opSFWeight]) == 0 {
				continue
			}
			worst, where := time.Duration(0), ""
			for _, pair := range sfOps {
				if d := median(r.Times[pair[1]]); d > worst {
					worst, where = d, pair[1]
				}
			}
			p("| %s | worst median %s (%s) | %s |\n", strings.ToUpper(libChangeTarget[:1])+libChangeTarget[1:], fmtDur(worst), where,
				verdict(worst <= libChangeLimit, fmt.Sprintf("by %s (%.1fx)", fmtDur(worst-libChangeLimit), worst.Seconds()/libChangeLimit.Seconds())))
		}
		p("| One backend change <= 2 ms median at any size | worst median %s (%s) | %s |\n", fmtDur(worst), where,
			verdict(worst <= 2*time.Millisecond, fmt.Sprintf("by %s (%.1fx)", fmtDur(worst-2*time.Millisecond), worst.Seconds()/0.002)))
		p("| Re-applying an unchanged state sends nothing | Changed=%t, Messages=%s at every size | %s |\n",
			changed, map[bool]string{true: "non-zero somewhere", false: "0"}[changed], verdict(!changed, ""))
	}
	p("\n")
}

// cpuRatio is floor's median CPU time per operation over the variant's at
// size s: like ratio, 1 means as cheap as floor and less is costlier.
func (dp *dataPlane) cpuRatio(s int, v string, keep bool) float64 {
	floor := dp.Cells[s][varFloor].summary(keep).CPUPerOp
	c := dp.Cells[s][v]
	if c == nil {
		return 0
	}
	if own := c.summary(keep).CPUPerOp; own > 0 {
		return float64(floor) / float64(own)
	}
	return 0
}

// ratio is a variant's median rate over floor's at size s.
func (dp *dataPlane) ratio(s int, v string, keep bool) float64 {
	floor := dp.Cells[s][varFloor].summary(keep).Rate
	c := dp.Cells[s][v]
	if c == nil || floor == 0 {
		return 0
	}
	return c.summary(keep).Rate / floor
}

func renderDataPlane(b *strings.Builder, dp *dataPlane, keep bool, workers int) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	if keep {
		p("%s\n\nRequest/response (\"ping\" answered by the backend's name) on %d persistent connections (one per client); ops/s are round trips per second.\n\n", headKeep, workers)
	} else {
		p("%s\n\nEach operation: connect to the measured farm (the last of S), read the backend's greeting (its name), close with a reset.\n\n", headConn)
	}
	p("| Farms | Variant | ops/s | range over reps | ratio to floor | CPU/op | CPU ratio | other load | p50 | p99 | errors | per-backend split | install |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
	for _, s := range dp.Sizes {
		for _, v := range dp.Variants {
			c := dp.Cells[s][v]
			sum := c.summary(keep)
			errs := fmt.Sprint(sum.Errors)
			if sum.FirstErr != "" {
				errs += " (" + shorten(sum.FirstErr, 60) + ")"
			}
			p("| %d | %s | %.0f | %.0f-%.0f | %.3f | %.1f µs | %.3f | %.0f%% | %s | %s | %s | %s | %s |\n", s, v, sum.Rate, sum.Min, sum.Max, dp.ratio(s, v, keep),
				us(sum.CPUPerOp), dp.cpuRatio(s, v, keep), 100*sum.Other,
				fmtDur(sum.P50), fmtDur(sum.P99), errs, fmtSplit(sum.Split), fmtDur(c.Install))
		}
	}
	p("\n")
}

func renderControlPlane(b *strings.Builder, rows []*cpRow, ref *kernelRef) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("%s\n\nWall time, median over repetitions. l4nft: `lb.Open` + `Apply` into a namespace without the table (install), then `Apply` of a state differing by one backend's weight, state (up->drain and back), one added backend, one removed backend, and the unchanged state (reapply). iptables: the restore program run inside the namespace on the seed design's rules (install), and `iptables-restore --noflush` replacing the one mangle rule a weight change alters (weight) - how an operator of the seed design changes one backend; process start-up is included. Messages: netlink messages l4nft sent (install / weight / state / add / remove / reapply).\n\n", headControl)
	p("| System | Farms x backends | install | weight | state | add | remove | reapply | messages | peak RSS rise | Go heap allocated | read back after install |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n")
	for _, r := range rows {
		cell := func(op string) string {
			ts := r.Times[op]
			if len(ts) == 0 {
				return "-"
			}
			return fmtDur(median(ts))
		}
		inst := cell(opInstall)
		if r.Err != "" {
			inst = shorten(r.Err, 80)
		}
		msgs, mem, alloc, present := "-", "-", "-", "-"
		if strings.HasPrefix(r.System, varL4nft) {
			var ms []string
			for _, op := range cpOps {
				ms = append(ms, fmt.Sprint(r.Messages[op]))
			}
			msgs = strings.Join(ms, " / ")
			mem, alloc, present = fmtBytes(r.PeakRSS), fmtBytes(r.Alloc), r.Present
		}
		p("| %s | %d x %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.System, r.Farms, r.Backends/max(1, r.Farms),
			inst, cell(opWeight), cell(opState), cell(opAdd), cell(opRemove), cell(opReapply), msgs, mem, alloc, present)
	}
	p("\n")
	renderLibChanges(b, rows)
	if ref != nil {
		p("Kernel reference (what any nftables client pays, measured with package nft in an empty namespace): one transaction adding one element to a plain set takes %s (median of %d); one deleting it takes %s. A transaction that deletes set elements waits for the kernel to release them, however few.\n\n",
			fmtDur(median(ref.Add)), len(ref.Add), fmtDur(median(ref.Delete)))
	}
}

// renderLibChanges renders the l4nft library's single changes through
// Apply beside the same through SetFarm, and its reads (Open, Status).
func renderLibChanges(b *strings.Builder, rows []*cpRow) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	var lib []*cpRow
	for _, r := range rows {
		if r.System == varL4nft && len(r.Times[opSFWeight]) > 0 {
			lib = append(lib, r)
		}
	}
	if len(lib) == 0 {
		return
	}
	p("%s\n\nThe same single changes to the last farm, on the installed state, through `Balancer.Apply` with the whole State (above) and through `Balancer.SetFarm` with the changed farm alone: total wall time of the call (validation, comparison, marshalling and the kernel transactions), median over every change of every repetition. Whole farm: `RemoveFarm` of the last farm, then `SetFarm` of it as a new farm. Messages: netlink messages sent (Apply / SetFarm). Target: %s.\n\n", headLibChanges, libChangeTarget)
	p("| Farms x backends | Change | Apply | SetFarm | messages | n (SetFarm) | target | verdict |\n|---|---|---:|---:|---|---:|---:|---|\n")
	names := map[string]string{opWeight: "backend weight", opState: "backend state (drain/up)", opAdd: "add a backend", opRemove: "remove a backend"}
	for _, r := range lib {
		judged := r.Farms == 10000 && r.Backends == 20000
		for _, pair := range sfOps {
			sf := median(r.Times[pair[1]])
			target, v := "-", "(reference)"
			if judged {
				target = "<= " + fmtDur(libChangeLimit)
				v = verdict(sf <= libChangeLimit, fmt.Sprintf("by %s (%.1fx)", fmtDur(sf-libChangeLimit), sf.Seconds()/libChangeLimit.Seconds()))
			}
			p("| %s x %d | %s | %s | %s | %d / %d | %d | %s | %s |\n", fmtCount(r.Farms), r.Backends/max(1, r.Farms), names[pair[0]],
				fmtDur(median(r.Times[pair[0]])), fmtDur(sf), r.Messages[pair[0]], r.Messages[pair[1]], len(r.Times[pair[1]]), target, v)
		}
		for _, op := range []string{opRemoveFarm, opSetFarmNew, opFarmReplace} {
			what := map[string]string{opRemoveFarm: "whole farm: `RemoveFarm`", opSetFarmNew: "whole farm: `SetFarm` of it again", opFarmReplace: "whole farm: both"}[op]
			msgs := "-"
			if m, ok := r.Messages[op]; ok {
				msgs = fmt.Sprintf("- / %d", m)
			}
			p("| %s x %d | %s | - | %s | %s | %d | - | (reference) |\n", fmtCount(r.Farms), r.Backends/max(1, r.Farms), what,
				fmtDur(median(r.Times[op])), msgs, len(r.Times[op]))
		}
	}
	p("\nReads: `lb.Open` of the installed table without a state file (the whole table is read back and adopted); `lb.Open` with `Options.StateFile` written by a `Close` just before, nothing having changed in the namespace since (\"generation unchanged\" counts the timed opens for which the nf_tables generation had not moved, so the read-back could be skipped); `Balancer.Status` (every counter dumped). Each Open's State is checked against what was applied.\n\n")
	p("| Farms x backends | Open (read-back) | Open with StateFile | generation unchanged | Status | farms in Status |\n|---|---:|---:|---:|---:|---:|\n")
	for _, r := range lib {
		p("| %s x %d | %s | %s | %d/%d | %s | %s |\n", fmtCount(r.Farms), r.Backends/max(1, r.Farms), fmtDur(median(r.Times[opOpen])),
			fmtDur(median(r.Times[opOpenState])), r.StateFileTrusted, len(r.Times[opOpenState]), fmtDur(median(r.Times[opStatus])), fmtCount(r.StatusFarms))
	}
	p("\n")
}

// libChangeTarget is the target of renderLibChanges, as the Targets table
// names it.
const libChangeTarget = "library: one backend change, total <= 1 ms at 10,000 farms x 2 (SetFarm)"

func renderDistribution(b *strings.Builder, rows []distRow) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("%s\n\nOne farm, new TCP connections, counted by the backend that answered. Pearson's chi-square against the weights; the p-value is the regularized upper incomplete gamma function Q(df/2, chi2/2) (package integration/stats, series and continued fraction). A split is consistent with the weights when p >= %g.\n\n", headDist, distAlpha)
	p("| System | Weights | Connections | Observed | Expected | chi2 (df) | p | Verdict | errors |\n|---|---|---:|---|---|---:|---:|---|---:|\n")
	for _, r := range rows {
		total, wsum := 0, 0
		for i := range r.Counts {
			total += r.Counts[i]
			wsum += r.Weights[i]
		}
		var exp []string
		for _, w := range r.Weights {
			exp = append(exp, fmt.Sprintf("%.1f", float64(total)*float64(w)/float64(wsum)))
		}
		v := "consistent"
		if r.P < distAlpha {
			v = "**rejected**"
		}
		p("| %s | %s | %d | %s | %s | %.2f (%d) | %.3g | %s | %d |\n", r.System, joinInts(r.Weights, ":"), total,
			joinInts(r.Counts, " / "), strings.Join(exp, " / "), r.Chi2, len(r.Counts)-1, r.P, v, r.Errors)
	}
	p("\n")
}

func renderLimits(b *strings.Builder) {
	fmt.Fprintf(b, `%s

- Farms and backends: l4nft names every farm and every backend by a value in the conntrack-mark bits of `+"`Options.MarkMask`"+`: farms + backends <= 2^bits - 1 (65,535 with the default 16 bits; 1,048,575 with the 20 bits, 0xfffff000, used here for the 100,000-backend case). Bits given to l4nft are taken from other users of the mark. Nothing else bounds the count short of memory: farms and backends are elements of a fixed set of maps, so the number of kernel objects does not grow with them (see "read back" above).
- Map sizes: the maps are created without a size, so the kernel does not cap them; element lists are sent in chunks of at most 1,000 (a single netlink attribute over 64 KiB is silently truncated). Each farm's weighted schedule is 2 interval elements per available backend.
- Weights: 1 to 10,000 per backend.
- Memory and time of an install grow linearly with elements (see the control-plane table); so does the user-space work of every Apply, changed or not (see reapply).
- The seed design has the same 32-bit mark but walks every farm's rules for every packet, so its cost grows linearly with farms (see the data-plane tables).

`, headLimits)
}

func renderMethod(b *strings.Builder, cfg config, dataPlane bool, bridgeNF string) {
	reps, workers := fmt.Sprintf("%d times", cfg.Reps), fmt.Sprint(cfg.Workers)
	if !dataPlane {
		// The data-plane sections, if any, were kept from an earlier run.
		reps, workers = "-reps times (in the run that measured the data plane)", "-workers"
	}
	fmt.Fprintf(b, `%s

- Topology (package integration/testbed): per data-plane variant a test bed of its own - one client namespace, one balancer namespace, two backend namespaces whose TCP servers answer with their own name - so each balancer namespace only ever holds its own variant's rules. Farm i listens on VIP 198.51.100.(1 + i/50), port 10000 + i%%50; every farm points at the same two backends (203.0.113.10 and .11, port 80). The measured farm is the last one (the last rules of the seed design's lists).
- Variants: **l4nft** - the lb library, NAT mode with Source = VIP; **iptables-legacy** / **iptables-nft** - the seed design generated for S farms (mangle CONNMARK restore, one `+"`statistic --mode random`"+` MARK rule per backend in the cascade order of the article, CONNMARK save on NEW, nat DNAT and POSTROUTING SNAT to the VIP by mark), loaded with iptables-legacy-restore / iptables-nft-restore; **floor** - one static nftables DNAT rule to the first backend and one SNAT rule back to the VIP (`+"`nft -f`"+`); **direct** - the client connects to the first backend's own address, routed by the balancer, which has no netfilter hook (so no conntrack) at all.
- Interleaving: for each size, every variant installs its rules once, then the variants run in turn, l4nft, iptables-legacy, iptables-nft, floor, direct, and again, %s; each visit measures new connections then established flows, each after flushing the balancer's conntrack table. Medians over the repetitions are reported; errors and splits are summed.
- Load: a child process of the suite started inside the client namespace runs %s concurrent Go clients (netpoller sockets) for a fixed time after a warm-up. New-connection clients close with SO_LINGER 0 (a reset): no TIME_WAIT on the client, so ports are reused at once; the client's ephemeral range is widened to 1024-65535; the balancer's conntrack table is flushed before every point. Latency is per operation, from dial to close (or per round trip).
- Bridge netfilter: the balancer namespace's bridges hand frames to the IP hooks when net.bridge.bridge-nf-call-iptables is 1 (the kernel's default for a new namespace; here it read %q). It costs every variant alike.
- Everything shares the same %d cores: clients, backends' servers and the balancer's kernel work. A ratio to floor therefore includes the client's and servers' costs, as a real single-box comparison would.
- CPU accounting: around every point the suite reads /proc/stat and its own and the load generator's rusage. CPU/op is (the suite's CPU time + the load generator's + the machine's softirq time, where the balancer's forwarding and netfilter work runs, capped at the machine's busy time since the kernel may charge softirq time to the interrupted task as well) / successful operations, warm-up included; "CPU ratio" is floor's CPU/op over the variant's. "Other load" is the machine's remaining busy time as a share of all its CPUs: work by other processes on the machine during the point. Throughput drops when other load rises; CPU/op hardly does.
- Control plane: namespaces of their own, no traffic. Peak memory: before each install the Go heap is returned to the OS and the process's peak resident set reset (`+"`echo 5 > /proc/self/clear_refs`"+`); the table reports the rise of VmHWM over the resident set before the install, and the Go heap allocated by it (runtime.MemStats.TotalAlloc). After the first install, the l4nft table is read back from the kernel and its elements counted.
- Needs root and the Debian packages iptables (iptables-legacy-restore, iptables-nft-restore) and nftables (nft). Conntrack is flushed through netlink, so conntrack(8) is not needed.

`, headMethod, reps, workers, bridgeNF, runtime.NumCPU())
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func fmtBytes(n uint64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
}

func fmtSplit(split map[string]int64) string {
	var total int64
	for _, n := range split {
		total += n
	}
	if total == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(mapKeys(split)) {
		parts = append(parts, fmt.Sprintf("%s %.1f%%", k, 100*float64(split[k])/float64(total)))
	}
	return strings.Join(parts, ", ")
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func joinInts(xs []int, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, sep)
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// plotColors gives every variant a colour.
var plotColors = map[string]string{
	varL4nft: "#1f77b4", varIptablesLegacy: "#d62728", varIptablesNft: "#ff7f0e", varFloor: "#2ca02c", varDirect: "#7f7f7f",
}

// renderPlot draws, against farms on log-log axes, each variant's ops/s
// relative to floor (top row) and its CPU cost relative to floor (bottom
// row), for new connections (left) and established flows (right).
func renderPlot(dp *dataPlane) string {
	const (
		w, h           = 1000, 780
		panelW, panelH = 400, 250
		left0, top0    = 80, 60
		colGap, rowGap = 100, 100
		legendY        = h - 18
	)
	metrics := []struct {
		title string
		ratio func(int, string, bool) float64
	}{
		{"ops/s ÷ floor's ops/s", dp.ratio},
		{"floor's CPU/op ÷ CPU/op", dp.cpuRatio},
	}
	lo, hi := 1.0, 1.0
	for _, m := range metrics {
		for _, keep := range []bool{false, true} {
			for _, s := range dp.Sizes {
				for _, v := range dp.Variants {
					if r := m.ratio(s, v, keep); r > 0 {
						lo, hi = math.Min(lo, r), math.Max(hi, r)
					}
				}
			}
		}
	}
	yMin := math.Pow(10, math.Floor(math.Log10(lo)))
	yMax := math.Max(2, hi*1.2)
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="24" text-anchor="middle" font-size="15" font-weight="bold">l4nft, the seed design and direct routing relative to floor (one static DNAT+SNAT rule), vs farms</text>`+"\n", w/2)
	for row, m := range metrics {
		for col, keep := range []bool{false, true} {
			left := float64(left0 + col*(panelW+colGap))
			right := left + panelW
			top := float64(top0 + row*(panelH+rowGap))
			bottom := top + panelH
			kind := "new connections"
			if keep {
				kind = "established flows"
			}
			xs := dp.Sizes
			xPos := func(s int) float64 {
				a, z := math.Log10(float64(xs[0])), math.Log10(float64(xs[len(xs)-1]))
				if z == a {
					return (left + right) / 2
				}
				return left + (math.Log10(float64(s))-a)/(z-a)*panelW
			}
			yPos := func(r float64) float64 {
				return bottom - (math.Log10(r)-math.Log10(yMin))/(math.Log10(yMax)-math.Log10(yMin))*panelH
			}
			p(`<text x="%.0f" y="%.0f" text-anchor="middle" font-size="13">%s: %s</text>`+"\n", (left+right)/2, top-10, kind, m.title)
			p(`<rect x="%.0f" y="%.0f" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", left, top, panelW, panelH)
			for e := math.Floor(math.Log10(yMin)); e <= math.Log10(yMax); e++ {
				for _, mant := range []float64{1, 2, 3, 5} {
					v := mant * math.Pow(10, e)
					if v < yMin || v > yMax {
						continue
					}
					y := yPos(v)
					p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, right, y)
					p(`<text x="%.0f" y="%.1f" text-anchor="end" dy="4">%s</text>`+"\n", left-6, y, trimFloat(v))
				}
			}
			y := yPos(0.97)
			p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#1f77b4" stroke-dasharray="6 4"/>`+"\n", left, y, right, y)
			p(`<text x="%.0f" y="%.1f" text-anchor="end" fill="#1f77b4" font-size="11">target 0.97</text>`+"\n", right-4, y+14)
			for _, s := range xs {
				x := xPos(s)
				p(`<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#eee"/>`+"\n", x, top, x, bottom)
				p(`<text x="%.1f" y="%.0f" text-anchor="middle">%d</text>`+"\n", x, bottom+16, s)
			}
			p(`<text x="%.0f" y="%.0f" text-anchor="middle">farms (log scale)</text>`+"\n", (left+right)/2, bottom+34)
			p(`<text transform="translate(%.0f %.0f) rotate(-90)" text-anchor="middle">ratio to floor (log scale)</text>`+"\n", left-50, (top+bottom)/2)
			// Reverse order: l4nft, first, is drawn last, on top of floor.
			for _, v := range slices.Backward(dp.Variants) {
				var pts []string
				for _, s := range xs {
					if r := m.ratio(s, v, keep); r > 0 {
						pts = append(pts, fmt.Sprintf("%.1f,%.1f", xPos(s), yPos(r)))
					}
				}
				col := plotColors[v]
				dash := ""
				if v == varFloor {
					dash = ` stroke-dasharray="3 3"`
				}
				p(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), col, dash)
				for _, pt := range pts {
					x, y, _ := strings.Cut(pt, ",")
					p(`<circle cx="%s" cy="%s" r="3.5" fill="%s"/>`+"\n", x, y, col)
				}
			}
		}
	}
	lx := float64(left0)
	for _, v := range dp.Variants {
		p(`<line x1="%.0f" y1="%d" x2="%.0f" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", lx, legendY-4, lx+24, legendY-4, plotColors[v])
		p(`<text x="%.0f" y="%d">%s</text>`+"\n", lx+30, legendY, v)
		lx += 60 + float64(len(v))*7.5
	}
	p("</svg>\n")
	return b.String()
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
