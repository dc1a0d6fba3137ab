package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// headAgent starts the agent suite's section of the report.
const headAgent = "## Agent control plane"

// agentResults is everything an agent-suite run measured.
type agentResults struct {
	Started, Finished time.Time
	Machine           machine
	Rows              []*agentRow
	// Dir is where the agent's files were, and DirFS its file system type.
	Dir, DirFS string
}

// newAgentResults starts the results of a run.
func newAgentResults(cfg config) *agentResults {
	dir := cfg.AgentDir
	if dir == "" {
		dir = os.TempDir()
	}
	return &agentResults{Started: time.Now(), Machine: describeMachine(), Dir: dir, DirFS: fsType(dir)}
}

// fsType names the file system dir is on.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown file system"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("file system 0x%x", st.Type)
}

// renderAgent renders the agent suite's section: every measurement at
// every size beside its target, then the daemon's memory.
func renderAgent(cfg config, res *agentResults) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("%s (the `l4nft` binary)\n\n", headAgent)
	if cfg.Smoke {
		p("**%s**: tiny sizes; these numbers say nothing about speed.\n\n", headSmokeTag)
	}
	m := res.Machine
	p("- Date: %s (run took %s)\n", res.Started.UTC().Format("2006-01-02 15:04 MST"), res.Finished.Sub(res.Started).Round(time.Second))
	p("- Machine: %d cores (%s), %s RAM, Linux %s; %s\n", m.CPUs, m.CPU, m.Memory, m.Kernel, m.Go)
	p("- Code: %s\n", m.Revision)
	p("- Command (as root, from the repository root): `%s`\n", cfg.Command)
	p("- Settings: %d repetitions per measurement (median and nearest-rank p99 reported; with few repetitions p99 is the slowest one), `l4nft run --watch-interval %v`, %d API changes before the second memory reading, configuration and socket in %s (%s), layouts: %s\n\n",
		cfg.Reps, cfg.AgentWatch, cfg.AgentChanges, res.Dir, res.DirFS, strings.Join(cfg.AgentLayouts, ", "))
	p("Each size runs in a network namespace of its own with a daemon of its own (`l4nft run`, started inside the namespace, socket in a temporary directory, no health checks); farm i is 198.51.100.(1 + i/50):(10000 + i%%50), NAT mode with the VIP as source, backends in 203.0.113.0/24. Changes go to the last farm's first backend. " +
		"Layout: `file` is one l4nft.yaml holding every farm; `dir` is a configuration directory, l4nft.yaml (table and options only) and farms.d/NAME.yaml, one farm per file; every size runs each layout with a daemon and namespace of its own, and each measurement's layouts sit next to each other below. An edit (reload, and `l4nft apply` after one change) rewrites the whole file in the file layout and the changed farm's file alone in the dir layout, written beside it and renamed over it; the agent writes API changes back the same way (the whole file, or the farm's file). " +
		"API: client-side time from sending the request to the end of the answer, a new unix-socket connection per request as curl makes (the agent applies the change and writes the file back before it answers). " +
		"Reload: time from renaming an edited copy over the file (one line differs: a weight; in the dir layout over the farm's file) until the kernel holds it, found by polling the nf_tables generation counter every 0.2 ms and reading the table back at each new generation. The agent learns of the edit from inotify and loads it once two looks 20 ms apart agree (polling every watch interval stays as its backstop). " +
		"`l4nft apply` and `l4nft status`: the whole process run (start, work, exit); apply runs inside the namespace on the file or the directory, from empty (table deleted first), unchanged, and after a one-line edit. " +
		"Every change is read back from the kernel after its timing (lb.Open adopts the installed table); \"read back\" counts the timings checked (for the unchanged apply: that the generation did not move, i.e. nothing was committed). " +
		"Targets are judged on the median.\n\n")
	p("| Farms x backends | Measurement | Layout | median | p99 | n | read back | target | verdict |\n|---|---|---|---:|---:|---:|---:|---:|---|\n")
	// Each measurement's layouts sit side by side.
	for _, g := range agentGroups(res.Rows) {
		for _, op := range agentOps {
			for _, r := range g {
				c := agentCase{r.Farms, r.PerFarm}
				ts := r.Times[op]
				if len(ts) == 0 {
					continue
				}
				med, target := median(ts), agentTarget(op, c)
				v := verdict(med <= target, fmt.Sprintf("by %s (%.1fx)", fmtDur(med-target), med.Seconds()/target.Seconds()))
				if r.Verified[op] < len(ts) {
					v += fmt.Sprintf("; **%d not confirmed in the kernel**", len(ts)-r.Verified[op])
				}
				p("| %s x %d | %s | %s | %s | %s | %d | %d/%d | <= %s | %s |\n", fmtCount(r.Farms), r.PerFarm, op, r.Layout, fmtDur(med), fmtDur(percentile(ts, 0.99)),
					len(ts), r.Verified[op], len(ts), fmtDur(target), v)
			}
		}
	}
	p("\nThe daemon's memory, from /proc/PID/status: peak resident set (VmHWM) and resident set (VmRSS) once it answered after starting on an empty kernel (so the peak includes the install), again after the timed steps above (so after the /metrics scrapes and status reads too), and after %d API weight changes made one after the other. Target: peak <= %s after start, and at most +%.0f%% after the changes.\n\n",
		cfg.AgentChanges, fmtBytes(agentRSSLimit), 100*agentRSSGrowth)
	p("| Farms x backends | Layout | peak after start | RSS after start | peak before changes | RSS before changes | peak after changes | RSS after changes | peak growth from start | changes took | /metrics size | verdict |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range res.Rows {
		growth := 0.0
		if r.StartHWM > 0 {
			growth = float64(r.AfterHWM)/float64(r.StartHWM) - 1
		}
		var miss []string
		if r.StartHWM > agentRSSLimit {
			miss = append(miss, fmt.Sprintf("peak after start over %s", fmtBytes(agentRSSLimit)))
		}
		if growth > agentRSSGrowth {
			miss = append(miss, fmt.Sprintf("grew %.1f%%", 100*growth))
		}
		perChange := time.Duration(0)
		if r.Changes > 0 {
			perChange = r.ChangesTime / time.Duration(r.Changes)
		}
		p("| %s x %d | %s | %s | %s | %s | %s | %s | %s | %+.1f%% | %s for %d (%s each) | %s | %s |\n", fmtCount(r.Farms), r.PerFarm, r.Layout,
			fmtBytes(r.StartHWM), fmtBytes(r.StartRSS), fmtBytes(r.BeforeHWM), fmtBytes(r.BeforeRSS), fmtBytes(r.AfterHWM), fmtBytes(r.AfterRSS), 100*growth,
			fmtDur(r.ChangesTime), r.Changes, fmtDur(perChange), fmtBytes(uint64(r.MetricsBytes)), verdict(len(miss) == 0, strings.Join(miss, ", ")))
	}
	var notes []string
	for _, r := range res.Rows {
		for _, n := range r.Notes {
			notes = append(notes, fmt.Sprintf("- %s x %d, %s layout: %s", fmtCount(r.Farms), r.PerFarm, r.Layout, n))
		}
	}
	if len(notes) > 0 {
		p("\nNotes:\n\n%s\n", strings.Join(notes, "\n"))
	}
	p("\n")
	return b.String()
}

// agentGroups groups rows by size, in order.
func agentGroups(rows []*agentRow) [][]*agentRow {
	var gs [][]*agentRow
	for _, r := range rows {
		if n := len(gs); n > 0 && gs[n-1][0].Farms == r.Farms && gs[n-1][0].PerFarm == r.PerFarm {
			gs[n-1] = append(gs[n-1], r)
			continue
		}
		gs = append(gs, []*agentRow{r})
	}
	return gs
}

// fmtCount writes n with thousands separators.
func fmtCount(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// sectionBounds returns where the section starting with head begins and
// ends in doc (the next "## " heading or the end), or -1, -1.
func sectionBounds(doc, head string) (int, int) {
	start := -1
	if strings.HasPrefix(doc, head) {
		start = 0
	} else if i := strings.Index(doc, "\n"+head); i >= 0 {
		start = i + 1
	}
	if start < 0 {
		return -1, -1
	}
	end := len(doc)
	if j := strings.Index(doc[start+len(head):], "\n## "); j >= 0 {
		end = start + len(head) + j + 1
	}
	return start, end
}

// spliceSection puts section (starting with head) into doc: in place of
// the section with that head, else before the Limits section, else at the
// end.
func spliceSection(doc, head, section string) string {
	if start, end := sectionBounds(doc, head); start >= 0 {
		return doc[:start] + section + doc[end:]
	}
	if start, _ := sectionBounds(doc, headLimits); start >= 0 {
		return doc[:start] + section + doc[start:]
	}
	if doc != "" && !strings.HasSuffix(doc, "\n\n") {
		doc = strings.TrimRight(doc, "\n") + "\n\n"
	}
	return doc + section
}

// writeAgentSection puts the agent section into the report at path,
// keeping the rest of it (creating the file if needed).
func writeAgentSection(path, section string) error {
	doc, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(doc) == 0 {
		doc = []byte("# l4nft benchmark results\n\n")
	}
	if err := os.WriteFile(path, []byte(spliceSection(string(doc), headAgent, section)), 0o644); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}

// keptSection returns the section with head of the report doc, if any.
func keptSection(doc, head string) string {
	start, end := sectionBounds(doc, head)
	if start < 0 {
		return ""
	}
	return doc[start:end]
}
