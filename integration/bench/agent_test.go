package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgentSuite runs the agent suite at a tiny size (10 farms and 10 x 10,
// one repetition, 20 changes), with both configuration layouts (one file,
// a directory), so that it cannot rot: every measurement completed and
// every change was read back from the kernel. It never checks how fast
// anything is.
func TestAgentSuite(t *testing.T) {
	requireRoot(t)
	cfg, err := parseFlags([]string{"-suite", "agent", "-smoke"}, io.Discard)
	if err != nil {
		t.Fatalf("failed to parse flags: %v", err)
	}
	res := newAgentResults(cfg)
	if res.Rows, err = runAgentSuite(t.Context(), cfg, t.Logf); err != nil {
		t.Fatalf("failed to run the agent suite: %v", err)
	}
	res.Finished = time.Now()
	if len(cfg.AgentLayouts) != 2 {
		t.Fatalf("layouts %v by default, want file and dir", cfg.AgentLayouts)
	}
	if want := len(agentCases(cfg)) * len(cfg.AgentLayouts); len(res.Rows) != want {
		t.Fatalf("%d sizes and layouts measured, want %d", len(res.Rows), want)
	}
	for i, r := range res.Rows {
		if want := cfg.AgentLayouts[i%2]; r.Layout != want {
			t.Errorf("row %d: layout %q, want %q", i, r.Layout, want)
		}
		for _, op := range agentOps {
			want := cfg.Reps
			if op == agPatchState {
				want = 2 * cfg.Reps // drain and up
			}
			if n := len(r.Times[op]); n != want {
				t.Errorf("%d x %d: %s timed %d times, want %d", r.Farms, r.PerFarm, op, n, want)
			}
			// An unchanged apply is not a change; whether it committed
			// anything is reported, not required here.
			if op != agApplyUnchanged && r.Verified[op] != len(r.Times[op]) {
				t.Errorf("%d x %d: %s: %d of %d read back from the kernel", r.Farms, r.PerFarm, op, r.Verified[op], len(r.Times[op]))
			}
		}
		if r.StartHWM == 0 || r.StartRSS == 0 || r.BeforeHWM == 0 || r.AfterHWM == 0 || r.AfterRSS == 0 || r.Changes != cfg.AgentChanges {
			t.Errorf("%d x %d: memory %d/%d -> %d/%d after %d changes", r.Farms, r.PerFarm, r.StartHWM, r.StartRSS, r.AfterHWM, r.AfterRSS, r.Changes)
		}
	}

	// The section goes into an existing report without disturbing it.
	out := filepath.Join(t.TempDir(), "RESULTS.md")
	before := "# l4nft benchmark results\n\n## Targets\n\nx\n\n" + headLimits + "\n\ny\n"
	if err := os.WriteFile(out, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	section := renderAgent(cfg, res)
	for range 2 { // the second write replaces the first
		if err := writeAgentSection(out, section); err != nil {
			t.Fatalf("failed to write the section: %v", err)
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	if strings.Count(report, headAgent) != 1 || !strings.Contains(report, "## Targets\n\nx\n\n"+headAgent) || !strings.HasSuffix(report, headLimits+"\n\ny\n") {
		t.Errorf("report after writing the agent section:\n%s", report)
	}
	for _, op := range agentOps {
		for _, layout := range cfg.AgentLayouts {
			if !strings.Contains(section, "| "+op+" | "+layout+" |") {
				t.Errorf("section lacks %q in the %s layout", op, layout)
			}
		}
	}
	if t.Failed() {
		t.Logf("section:\n%s", section)
	}
}

func TestSpliceSection(t *testing.T) {
	sec := headAgent + " (x)\n\nnew\n\n"
	for _, c := range []struct{ doc, want string }{
		{"", sec},
		{"# r\n\n## A\n\na\n", "# r\n\n## A\n\na\n\n" + sec},
		{"# r\n\n## A\n\na\n\n" + headLimits + "\n\nl\n", "# r\n\n## A\n\na\n\n" + sec + headLimits + "\n\nl\n"},
		{"# r\n\n" + headAgent + " (x)\n\nold\n\n## B\n\nb\n", "# r\n\n" + sec + "## B\n\nb\n"},
		{"# r\n\n" + headAgent + " (x)\n\nold\n", "# r\n\n" + sec},
	} {
		if got := spliceSection(c.doc, headAgent, sec); got != c.want {
			t.Errorf("spliceSection(%q) =\n%q\nwant\n%q", c.doc, got, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	ts := []time.Duration{5, 1, 4, 2, 3}
	if p := percentile(ts, 0.99); p != 5 {
		t.Errorf("p99 of 1..5 = %v, want 5", p)
	}
	if p := percentile(ts, 0.5); p != 3 {
		t.Errorf("p50 of 1..5 = %v, want 3", p)
	}
	var many []time.Duration
	for i := range 1000 {
		many = append(many, time.Duration(1000-i))
	}
	if p := percentile(many, 0.99); p != 990 {
		t.Errorf("p99 of 1..1000 = %v, want 990", p)
	}
}
