package main

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

// fakeResults builds results as a run would, without running anything.
func fakeResults() (config, *results) {
	cfg := config{Reps: 2, Duration: time.Second, Workers: 32, Sizes: []int{1, 100, 10000}, Variants: allVariants, Command: "go run ./integration/bench"}
	dp := &dataPlane{Sizes: cfg.Sizes, Variants: cfg.Variants, Cells: map[int]map[string]*dpCell{}}
	for _, s := range cfg.Sizes {
		dp.Cells[s] = map[string]*dpCell{}
		for i, v := range cfg.Variants {
			c := &dpCell{Variant: v, Farms: s}
			for rep := range cfg.Reps {
				r := loadResult{Ops: int64(1000 * (10 + i + rep)), Seconds: 1, P50: time.Millisecond, P99: 3 * time.Millisecond,
					Split: map[string]int64{"backend0": 500, "backend1": 500}}
				if v == varIptablesLegacy {
					r.Ops /= int64(s)
				}
				c.Samples = append(c.Samples, dpSample{Conn: r, KeepAlive: r})
			}
			dp.Cells[s][v] = c
		}
	}
	cp := []*cpRow{{System: varL4nft, Farms: 10000, Backends: 20000, Messages: map[string]int{opInstall: 400},
		Times: map[string][]time.Duration{opInstall: {time.Second}, opWeight: {3 * time.Millisecond}, opReapply: {time.Millisecond}}}}
	dist := []distRow{{System: varL4nft, Weights: []int{1, 3}, Counts: []int{250, 750}, Chi2: 0, P: 1}}
	return cfg, &results{Started: time.Now(), Finished: time.Now(), DataPlane: dp, ControlPlane: cp, Distribution: dist,
		KernelRef: &kernelRef{Add: []time.Duration{time.Millisecond}, Delete: []time.Duration{10 * time.Millisecond}}}
}

func TestReportHasEverySection(t *testing.T) {
	cfg, res := fakeResults()
	md := renderMarkdown(cfg, res)
	for _, h := range []string{headTargets, headConn, headKeep, headControl, headDist, headLimits, headMethod, "Kernel reference"} {
		if !strings.Contains(md, h) {
			t.Errorf("report lacks %q", h)
		}
	}
	if strings.Contains(md, headSmokeTag) {
		t.Error("a full run is labelled a smoke run")
	}
	if want := "| Install 10,000 farms x 2 backends <= 0.3 s | 1.00 s | **missed**"; !strings.Contains(md, want) {
		t.Errorf("report lacks the install verdict %q:\n%s", want, md)
	}
}

func TestPlotIsWellFormedSVG(t *testing.T) {
	_, res := fakeResults()
	svg := renderPlot(res.DataPlane)
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("plot is not well-formed XML: %v", err)
		}
	}
	for _, v := range allVariants {
		if !strings.Contains(svg, ">"+v+"<") {
			t.Errorf("legend lacks %s", v)
		}
	}
}

// TestPartialRunKeepsOtherSections: a run of the control plane alone
// replaces that section and keeps the data plane, distribution and agent
// sections (and their Targets rows, marked) of the report it replaces.
func TestPartialRunKeepsOtherSections(t *testing.T) {
	cfg, full := fakeResults()
	prev := renderMarkdown(cfg, full)
	prev = spliceSection(prev, headAgent, headAgent+" (x)\n\nagent table\n\n")
	_, res := fakeResults()
	res.DataPlane, res.Distribution = nil, nil
	res.ControlPlane[0].Times[opSFWeight] = []time.Duration{500 * time.Microsecond}
	md := keepUnmeasured(renderMarkdown(cfg, res), prev, res)
	order := []string{headTargets, headConn, headKeep, headControl, headLibChanges, headDist, headAgent, headLimits, headMethod}
	at := -1
	for _, h := range order {
		i := strings.Index(md, "\n"+h)
		if i <= at || strings.Count(md, "\n"+h) != 1 {
			t.Errorf("%q at %d (after %d), %d times", h, i, at, strings.Count(md, "\n"+h))
		}
		at = i
	}
	for _, want := range []string{"| l4nft >= 0.97 x floor, new connections, every S (by ops/s) (earlier run) |", "- Not measured by this run, kept from the report it replaced",
		"| Library: one backend change, total <= 1 ms at 10,000 farms x 2 (SetFarm) | worst median 500 µs", "![ops/s ratio"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", md)
	}
}
